"""Draft models: configuration, building blocks and the DSpark/DFlash draft.

``checkpoint -> DraftConfig -> DSparkDraft``; :mod:`dspark_sgl.checkpoint` loads and saves
them, :mod:`dspark_sgl.engine` runs them against a Hugging Face target.
"""

from dspark_sgl.models.config import ARCHITECTURES, MARKOV_HEAD_TYPES, DraftConfig
from dspark_sgl.models.draft import ContextCache, DSparkDraft

__all__ = ["ARCHITECTURES", "MARKOV_HEAD_TYPES", "ContextCache", "DSparkDraft", "DraftConfig"]
