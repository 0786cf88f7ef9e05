"""The evaluation side of a loaded model: tgllava.Model as an EvalModel (protocol.py).

`ModelAdapter(model).chat_batch(items, ...)` answers evaluation items - dicts with the full
LLM prompt (one ``<image>`` where the picture goes), the picture, the TG-LLaVA text guide and
an ``image_key`` - in one batched greedy generation, and returns one stripped answer string per
item.  Rows that show the same picture again (MMBench's rotations, MME's question pairs) carry
the same key; the adapter keeps the vision-tower output of the last `cache_size` keys
(Model.cacheable_features) and hands it back as `features=`, so the tower runs once per
picture while the TG modules still run per question.  `as_eval_model(model)` is what the
runner calls: a tgllava.Model gets an adapter, anything else that has `chat_batch` (a test
fake, a user's own wrapper) is used as it is.

The Model itself stays the plain engine: tokenizers come from tgllava.chat.tokenizers, pixels
from tgllava.image.preprocess in the mode the model's config asks for, and generation from
Model.generate_batch.
"""

import collections

from .. import chat, image, tokenize


class ModelAdapter:
    """A tgllava.Model answering tgllava.eval items (see the module text)."""

    def __init__(self, model, cache_size=64):
        self.model = model
        self.cache_size = int(cache_size)
        self._features = collections.OrderedDict()  # (image_key, DP on) -> vision-tower output

    # what the runner reads besides chat_batch: the model's config, folder and name
    @property
    def config(self):
        return self.model.config

    @property
    def llm_dir(self):
        return getattr(self.model, "llm_dir", None)

    def _pixels(self, img):
        return image.preprocess(img, mode=image.mode_from_config(self.model.config), size=self.model.image_size)

    def _cached_features(self, key, pixels, use_dp):
        cache_key = (key, bool(use_dp and self.model.has_dp))
        feats = self._features.pop(cache_key, None)
        if feats is None:
            feats = self.model.cacheable_features(pixels, use_dp)
        self._features[cache_key] = feats  # most recently used last
        while len(self._features) > self.cache_size:
            self._features.popitem(last=False)
        return feats

    def chat_batch(self, items, max_new_tokens=128, temperature=0.0, use_fom=True, use_dp=True, seed=0):
        """One answer string per item dict {"image", "prompt", "text_guide", "image_key"}, in order."""
        m = self.model
        llm_tok, clip_tok = chat.tokenizers(m)
        reqs = []
        for it in items:
            img = it["image"][0] if isinstance(it["image"], (list, tuple)) else it["image"]
            pixels = self._pixels(img)
            req = {"input_ids": tokenize.tokenizer_image_token(it["prompt"], llm_tok), "pixels": pixels,
                   "use_fom": use_fom, "use_dp": use_dp}
            if it.get("image_key") is not None:
                req["features"] = self._cached_features(it["image_key"], pixels, use_dp)
            if m.has_tg and (use_fom or use_dp):
                req["text_ids"] = clip_tok.encode(it.get("text_guide") or "")
            reqs.append(req)
        if not reqs:
            return []
        outs = m.generate_batch(reqs, max_new_tokens=max_new_tokens, temperature=temperature,
                                eos_token_id=list(llm_tok.eos_ids) or None, seed=seed)
        return [llm_tok.decode(t).strip() for t in outs]


def as_eval_model(model):
    """What the runner talks to: a ModelAdapter for a tgllava.Model, else the object itself."""
    from ..api import Model

    if isinstance(model, Model):
        return ModelAdapter(model)
    if not callable(getattr(model, "chat_batch", None)):
        from .errors import EvalError

        raise EvalError(f"{type(model).__name__} is neither a tgllava.Model nor has a chat_batch method "
                        "(see tgllava/eval/protocol.py)")
    return model
