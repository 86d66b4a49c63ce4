"""The chat template: how a conversation becomes one token sequence, written in code.

A conversation renders as (``<bos>``/``<eos>`` are the tokenizer's special tokens)::

    <bos>SYSTEM: {system}\\nUSER: {user}\\nASSISTANT: {reply}<eos>USER: {user}\\nASSISTANT: {reply}<eos>

Only ``{reply}<eos>`` pieces carry labels. Every piece is tokenized on its own, so the
boundary between prompt and reply is exact whatever the tokenizer merges. For generation
the last reply is dropped and the sequence ends with ``ASSISTANT: ``; the model's reply
is then expected to end with ``<eos>``.

It is deliberately not a Jinja ``tokenizer.chat_template``: label masking needs to know
which characters are replies, which a rendered string no longer tells.
"""

from __future__ import annotations

from dataclasses import dataclass

from amylum.data.records import Turn

PROMPT, REPLY = "prompt", "reply"


@dataclass(frozen=True)
class ChatTemplate:
    system: str = "SYSTEM: "
    user: str = "USER: "
    assistant: str = "ASSISTANT: "
    turn_end: str = "\n"  # ends system and user turns; assistant turns end with <eos>

    def pieces(self, turns: list[Turn], generation: bool = False) -> list[tuple[str, str]]:
        """``[(text, PROMPT | REPLY), …]``; the caller appends ``<eos>`` after every REPLY.

        With ``generation=True`` the turns must end with the assistant reply to predict; that
        reply is left out and the prompt ends with the assistant marker.
        """
        if generation:
            if not turns or turns[-1].role != "assistant":
                raise ValueError("generation needs a conversation that ends with an assistant turn")
            turns = turns[:-1]
        out: list[tuple[str, str]] = []
        for t in turns:
            if t.role == "assistant":
                out.append((self.assistant, PROMPT))
                out.append((t.text, REPLY))
            else:
                out.append(((self.system if t.role == "system" else self.user) + t.text + self.turn_end, PROMPT))
        if generation:
            out.append((self.assistant, PROMPT))
        return out

    def marker_texts(self) -> list[str]:
        """Strings worth including when training a tokenizer for this template."""
        return [self.system, self.user, self.assistant, self.turn_end]
