"""What the evaluation loop asks of a model: one method, `chat_batch` (and optionally `answer_stream`).

A `tgllava.Model` (what `tgllava.load(...)` returns) is wrapped by the
runner in `tgllava.eval.adapter.ModelAdapter`, which satisfies `EvalModel`;
tests use small fakes.  Besides `chat_batch` the loop only reads two optional
attributes: `config` (a dict; `conv_mode`, `model_type` and
`_name_or_path` pick the chat template and the default model name) and
`name`.

Each item passed to chat_batch is a dict:

* ``"image"``: a PIL RGB image, or a list of them for multi-image rows;
* ``"prompt"``: the full LLM prompt, with one ``<image>`` marker per
  picture (exactly one for single-image rows) where the image features
  go, ending where the answer starts;
* ``"text_guide"``: the TG-LLaVA text guide (the user's instruction
  without ``<image>``, stripped); models without TG modules ignore it;
* ``"image_key"``: a stable identity of the picture (a hash of its bytes or
  its file path).  Rows with equal keys show the same picture - MMBench's
  rotations, MME's question pairs - and come in adjacent batches, so the
  model can keep the vision tower's output for a key and reuse it; the TG
  modules (FOM, DP) still run per question, since they depend on the text.

It must return one answer per item, in order - a string, or an object
whose `.text` is one (such as tgllava.chat.Answer) - each equal to what a
batch of one would return (greedy decoding: temperature 0.0).  Answers are
stripped of surrounding whitespace, as VLMEvalKit's LLaVA wrapper does.

A model may also have ``answer_stream(keyed_items, max_batch, max_new_tokens, temperature,
use_fom, use_dp)`` (the keywords of chat_batch): it reads (key, item) pairs lazily and yields
(key, answer) as each answer ends, at most ``max_batch`` in progress at once.  The runner then
uses it instead of chat_batch, so no answer waits for the longest one of its batch (a
tgllava.Model's adapter does this with continuous batching).
"""

from typing import List, Protocol, runtime_checkable


@runtime_checkable
class EvalModel(Protocol):
    """The model interface of tgllava.eval."""

    def chat_batch(self, items: List[dict], max_new_tokens: int = 128, temperature: float = 0.0,
                   use_fom: bool = True, use_dp: bool = True) -> List[str]:
        """Answer each item; see the module docstring for the item fields."""
        ...
