"""Data path: records → processor → collated :class:`MultimodalBatch`; demo data."""

from amylum.data.batch import IGNORE_INDEX, TEXT_KIND, MultimodalBatch
from amylum.data.chat import ChatTemplate
from amylum.data.collate import collate, pack_rows
from amylum.data.dataset import MultimodalDataset, ResumableLoader
from amylum.data.demo import DemoDataset, answer_accuracy, make_demo_dataset, normalize_answer
from amylum.data.errors import DataError, SkipCounter
from amylum.data.processor import MultimodalProcessor
from amylum.data.records import Record, Turn, load_records, parse_record
from amylum.data.sample import ProcessedSample
from amylum.data.tokenizer import add_placeholder_tokens, build_demo_tokenizer, load_tokenizer

__all__ = [
    "IGNORE_INDEX", "TEXT_KIND", "MultimodalBatch", "ChatTemplate", "collate", "pack_rows",
    "MultimodalDataset", "ResumableLoader", "DemoDataset", "answer_accuracy", "make_demo_dataset",
    "normalize_answer", "DataError", "SkipCounter", "MultimodalProcessor", "Record", "Turn",
    "load_records", "parse_record", "ProcessedSample", "add_placeholder_tokens", "build_demo_tokenizer",
    "load_tokenizer",
]
