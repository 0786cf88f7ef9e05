"""The optional judge: a Python callable or an OpenAI-compatible endpoint.

VLMEvalKit asks an LLM (its "judge") when the rule-based extraction fails
(MCQ and yes/no sets) or for the whole score (MathVista's answer
extraction, MMVet's 0-1 grades, LLaVABench's 1-10 ratings).  Here a judge
is anything `make_judge` accepts:

* None or "exact_matching": no judge (VLMEvalKit's exact_matching policy);
* a callable ``f(prompt: str) -> str``;
* an ``http://`` or ``https://`` URL of an OpenAI-compatible server: the
  chat-completions endpoint itself, or a base such as
  ``https://api.openai.com/v1`` to which ``/chat/completions`` is added.
  The model name comes from `model` (or $TGLLAVA_JUDGE_MODEL, default
  gpt-4o-mini) and the key from $OPENAI_API_KEY when set.

Every judge reply can be cached in a JSON-lines file keyed by the prompt,
so re-scoring a run does not ask the same questions twice.
The judge prompts are this package's own wording of the same tasks, so
judged scores are close to, not identical with, VLMEvalKit's.
"""

import hashlib
import json
import os
import time
import urllib.error
import urllib.request

from .errors import JudgeError

DEFAULT_JUDGE_MODEL = "gpt-4o-mini"


class Judge:
    """Base class: `name` (used in file names) and `ask(prompt, temperature)`."""

    name = "judge"

    def __init__(self):
        self.cache = None

    def ask(self, prompt, temperature=0.0):
        key = None
        if self.cache is not None:
            key = hashlib.sha256(f"{temperature}\0{prompt}".encode("utf-8")).hexdigest()
            if key in self.cache.replies:
                return self.cache.replies[key]
        reply = self._ask(prompt, temperature)
        if not isinstance(reply, str):
            raise JudgeError(f"judge {self.name} returned {type(reply).__name__}, expected str")
        if self.cache is not None:
            self.cache.add(key, reply)
        return reply

    def _ask(self, prompt, temperature):  # pragma: no cover - abstract
        raise NotImplementedError


class CallableJudge(Judge):
    """A Python callable f(prompt) -> str as a judge."""

    def __init__(self, fn, name=None):
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "judge_name", None) or getattr(fn, "__name__", "custom")
        if self.name == "<lambda>":
            self.name = "custom"

    def _ask(self, prompt, temperature):
        try:
            return self.fn(prompt)
        except Exception as e:
            raise JudgeError(f"judge {self.name} raised {type(e).__name__}: {e}") from e


class HTTPJudge(Judge):
    """An OpenAI-compatible chat-completions endpoint as a judge."""

    def __init__(self, url, model=None, api_key=None, timeout=60.0, retries=3, max_tokens=1024, backoff=0.5):
        super().__init__()
        url = url.rstrip("/")
        if not url.endswith("/chat/completions"):
            url += "/chat/completions"
        self.url = url
        self.model = model or os.environ.get("TGLLAVA_JUDGE_MODEL") or DEFAULT_JUDGE_MODEL
        self.name = self.model.replace("/", "_")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.retries = retries
        self.max_tokens = max_tokens
        self.backoff = backoff

    def _ask(self, prompt, temperature):
        body = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": temperature,
            "max_tokens": self.max_tokens,
        }).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.retries):
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                return data["choices"][0]["message"]["content"] or ""
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
                last = e
                if attempt + 1 < self.retries:
                    time.sleep(min(2 ** attempt, 8) * self.backoff)
        raise JudgeError(f"judge endpoint {self.url} failed after {self.retries} tries: {last}")


class JudgeCache:
    """Replies by prompt hash, appended to a JSON-lines file."""

    def __init__(self, path):
        self.path = path
        self.replies = {}
        if os.path.exists(path):
            with open(path, "r", encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.replies[rec["key"]] = rec["reply"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut by a kill

    def add(self, key, reply):
        self.replies[key] = reply
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")


def make_judge(judge, model=None):
    """None for exact matching, else a Judge (see the module docstring)."""
    if judge is None or isinstance(judge, Judge):
        return judge
    if isinstance(judge, str):
        if judge in ("", "exact_matching", "none"):
            return None
        if judge.startswith(("http://", "https://")):
            return HTTPJudge(judge, model=model)
        raise JudgeError(
            f"judge {judge!r}: expected 'exact_matching', an http(s):// URL or a Python callable")
    if callable(judge):
        return CallableJudge(judge)
    raise JudgeError(f"judge of type {type(judge).__name__} is neither a URL nor callable")


def judge_name(judge):
    return "exact_matching" if judge is None else judge.name


# ------------------------------------------------------------------ prompts
# Our own wording of the tasks VLMEvalKit gives its judge.

def mcq_prompt(question, choices, prediction):
    options = "\n".join(f"{k}. {v}" for k, v in choices.items())
    letters = ", ".join(choices)
    return (
        "Match a reply to the option it chooses in a single-choice question.\n"
        "Read the question, its options and the reply. Output the letter of the option "
        "the reply means. If the reply refuses, or means none of the options, output Z.\n"
        f"Output exactly one uppercase letter, one of {letters} or Z.\n\n"
        f"Question: {question}\nOptions:\n{options}\nReply: {prediction}\nLetter:")


def yes_no_prompt(question, prediction):
    return (
        "Decide whether a reply to a yes/no question says yes or no.\n"
        "Output exactly one word: Yes, No, or Unknown when the reply says neither.\n\n"
        f"Question: {question}\nReply: {prediction}\nWord:")


def mathvista_prompt(question, prediction):
    return (
        "Extract the final answer from a model's reply to a math question about a figure.\n"
        "Give only the answer, in the form the question asks for: an integer (14), a "
        "decimal with the requested places (1.45), a Python list ([2007, 2008]) or an "
        "option letter (B).\n\n"
        f"{question}\nModel reply: {prediction}\nExtracted answer:")


def mmvet_prompt(question, answer, prediction):
    return (
        "Grade a prediction against the ground truth with a correctness score from 0.0 "
        "(totally wrong) to 1.0 (totally right), in steps of 0.1. In the ground truth, "
        "<AND> means every part must be in the prediction to be totally right, <OR> means "
        "any one part is enough. Output only the number.\n\n"
        f"Question: {question}\nGround truth: {answer}\nPrediction: {prediction}\nScore:")


def llavabench_prompt(caption, question, reference, prediction):
    return (
        f"[Context]\n{caption}\n\n[Question]\n{question}\n\n"
        f"[Assistant 1]\n{reference}\n\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{prediction}\n\n[End of Assistant 2]\n\n"
        "[System]\nTwo assistants answered the user's question about an image, which the "
        "context describes in words. Rate each answer for helpfulness, relevance, accuracy "
        "and level of detail on a scale of 1 to 10 (higher is better). On the first line "
        "write only the two scores, for Assistant 1 and Assistant 2, separated by a space. "
        "Then explain your ratings, without letting the order of the answers sway you.\n\n")
