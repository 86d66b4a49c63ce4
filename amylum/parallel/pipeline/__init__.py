"""Pipeline parallelism: stages cut through each model's layer lists, and an executor for planner action lists."""

from amylum.parallel.pipeline.executor import PipelineExecutor
from amylum.parallel.pipeline.stages import (
    LLM,
    StageAssignment,
    build_stage,
    stage_graph_inputs,
    validate_assignments,
)

__all__ = ["LLM", "PipelineExecutor", "StageAssignment", "build_stage", "stage_graph_inputs", "validate_assignments"]
