"""Request validation SGLang 0.5.23 leaves out: empty prompts and ids outside the vocabulary.

SGLang's tokenizer manager checks that ``input_ids`` fit the context but not that there are
any, nor their values. An empty prompt (``"text": ""``) reaches the scheduler and crashes it
in the logits processor; an id ``>= vocab_size`` crashes it in the embedding lookup (an
``IndexError`` on the CPU, a device-side assert on a GPU); either takes the server down.
:func:`validate_input_ids` (BEFORE ``TokenizerManager._validate_one_request``) rejects such
a request with a ``ValueError`` saying why, which SGLang answers with HTTP 400, and the
server keeps serving. Requests with image, video or audio data are left to SGLang (their
placeholder ids are not vocabulary ids).
"""

from __future__ import annotations

from typing import Any

from dspark_sgl.sglang_plugin.switches import log_once

__all__ = ["validate_input_ids"]

_MULTIMODAL_FIELDS = ("image_data", "video_data", "audio_data", "input_embeds")


def validate_input_ids(self: Any, obj: Any, input_ids: Any, *args: Any, **kwargs: Any) -> None:
    """BEFORE ``TokenizerManager._validate_one_request(obj, input_ids)``: at least one id,
    every id in ``[0, model_config.vocab_size)``, else ``ValueError``."""
    if input_ids is None or any(getattr(obj, field, None) is not None for field in _MULTIMODAL_FIELDS):
        return
    if len(input_ids) == 0:
        raise ValueError("the prompt is empty: input_ids has no token (an empty text encodes to none)")
    vocab_size = int(self.model_config.vocab_size)
    log_once("input_ids", "dspark_sgl", f"request token ids checked against the vocabulary ({vocab_size})")
    for position, token in enumerate(input_ids):
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
            raise ValueError(
                f"input_ids[{position}] = {token!r} is not a token id of this model "
                f"(valid range [0, {vocab_size}))"
            )
