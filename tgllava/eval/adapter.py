"""The evaluation side of a loaded model: tgllava.Model as an EvalModel (protocol.py).

`ModelAdapter(model).chat_batch(items, ...)` answers evaluation items (protocol.py) with greedy
decoding, one stripped answer string per item; `answer_stream(keyed_items, max_batch)` is the
continuous form the runner uses: items are read as slots free up and answers come back as they
end (Model.generate_many).

Rows that show the same picture again (MMBench's rotations, MME's question pairs) reuse its
vision-tower output: the adapter's tgllava.generation.FeatureCache (by pixel content, within
`feature_cache_bytes`) hands it to the generation as `features=`, so the tower runs once per
picture while the TG modules still run per question.  `as_eval_model(model)` is what the
runner calls: a tgllava.Model gets an adapter, anything else that has `chat_batch` (a test
fake, a user's own wrapper) is used as it is.

The Model itself stays the plain engine: tokenizers, pixels and generation come from
tgllava.chat, tgllava.image (in the mode the model's config asks for) and tgllava.generation.
"""

from .. import _C, chat, generation, image, tokenize


class ModelAdapter:
    """A tgllava.Model answering tgllava.eval items (see the module text)."""

    def __init__(self, model, feature_cache_bytes=generation.FEATURE_CACHE_BYTES):
        self.model = model
        self.feature_cache = generation.FeatureCache(model, feature_cache_bytes)
        self.config = model.config  # what the runner reads besides chat_batch: the config and folder
        self.llm_dir = getattr(model, "llm_dir", None)

    def _request(self, item, use_fom, use_dp):
        m = self.model
        llm_tok, clip_tok = chat.tokenizers(m)
        img = item["image"][0] if isinstance(item["image"], (list, tuple)) else item["image"]
        req = {"input_ids": tokenize.tokenizer_image_token(item["prompt"], llm_tok),
               "pixels": image.preprocess_for(m, img),
               "use_fom": use_fom, "use_dp": use_dp}
        if m.has_tg and (use_fom or use_dp):
            req["text_ids"] = clip_tok.encode(item.get("text_guide") or "")
        return req

    def chat_batch(self, items, max_new_tokens=128, temperature=0.0, use_fom=True, use_dp=True, seed=0):
        """One answer string per item dict {"image", "prompt", "text_guide", "image_key"}, in order."""
        slots = min(max(len(items), 1), _C.MAX_BATCH)
        answers = dict(self.answer_stream(enumerate(items), slots, max_new_tokens, temperature, use_fom, use_dp, seed))
        return [answers[i] for i in range(len(answers))]

    def answer_stream(self, keyed_items, max_batch=8, max_new_tokens=128, temperature=0.0, use_fom=True, use_dp=True,
                      seed=0):
        """Continuous batching over (key, item) pairs: yields (key, answer string) as each answer ends.

        keyed_items is read only as slots free up (generation.generate_many), so the runner's generator
        can decode the next pictures meanwhile; at most max_batch answers are generated together,
        and a finished one's slot goes to the next item at once instead of waiting for the batch.
        """
        m = self.model
        llm_tok = chat.tokenizers(m)[0]
        keys = []

        def requests():
            for key, item in keyed_items:
                keys.append(key)
                yield self._request(item, use_fom, use_dp)

        for index, tokens in generation.generate_many(m, requests(), max_new_tokens=max_new_tokens,
                                                      temperature=temperature, eos_token_id=list(llm_tok.eos_ids) or None,
                                                      seed=seed, max_batch=max_batch, feature_cache=self.feature_cache):
            yield keys[index], llm_tok.decode(tokens).strip()


def as_eval_model(model):
    """What the runner talks to: a ModelAdapter for a tgllava.Model, else the object itself."""
    from ..model import Model

    if isinstance(model, Model):
        return ModelAdapter(model)
    if not callable(getattr(model, "chat_batch", None)):
        from .errors import EvalError

        raise EvalError(f"{type(model).__name__} is neither a tgllava.Model nor has a chat_batch method "
                        "(see tgllava/eval/protocol.py)")
    return model
