"""The fine-tuning methods (`finetune.method`) in one table: what each trains, what its training logits score
against, how its saved head is made.

`aigi.train` reads a method only through this table (it never compares the name), the params' choice
(`FinetuneParams.method`) and `aigi compare` list exactly its methods: a new method is one row here plus,
if it needs one, a new part or flag that `aigi.train` interprets.

Every method ends as the same detector (image features times a head with one row per class), so
evaluation, prediction and serving do not know which one made it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The parts of a detector a method can train (aigi.train.trainable_parameters freezes the rest).
HEAD = "head"  # the N-way linear head
IMAGE_TOWER = "image_tower"  # clip.visual; `finetune.unlocked_layers` narrows it to the last N blocks
TEXT_TOWER = "text_tower"  # the rest of clip but the logit scale; `finetune.lock_text` keeps it fixed
LOGIT_SCALE = "logit_scale"
PARTS = (HEAD, IMAGE_TOWER, TEXT_TOWER, LOGIT_SCALE)


@dataclass(frozen=True)
class Method:
    name: str
    trains: frozenset[str]  # a subset of PARTS
    scores_text: bool  # training logits: image features against the class-prompt embeddings (not the head)
    head_from_text: bool  # the saved head is baked from the (trained) text tower's class embeddings at the end

    def __post_init__(self) -> None:
        unknown = set(self.trains) - set(PARTS)
        if unknown:
            raise ValueError(f"method {self.name}: unknown parts {sorted(unknown)}; the parts are {PARTS}")


METHODS: dict[str, Method] = {m.name: m for m in (
    # FLYP-style: each image scored against every class-prompt embedding, cross-entropy over the classes
    Method("contrastive", frozenset({IMAGE_TOWER, TEXT_TOWER, LOGIT_SCALE}), scores_text=True, head_from_text=True),
    # the head alone, initialised from the zero-shot text embeddings
    Method("linear_probe", frozenset({HEAD}), scores_text=False, head_from_text=False),
    # image tower + head; the text tower only initialised the head
    Method("full", frozenset({IMAGE_TOWER, HEAD}), scores_text=False, head_from_text=False),
)}
