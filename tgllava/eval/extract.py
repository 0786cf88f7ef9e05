"""Answer extraction and answer normalisation, VLMEvalKit's rules.

* `infer_option` / `infer_text` / `infer_choice` reproduce can_infer_option,
  can_infer_text and can_infer (vlmeval/utils/matching_util.py): refusal
  phrases give 'Z'; ``.()[],:;!*#{}`` become spaces and the answer is split
  into tokens; exactly one option letter among the tokens, and within the
  last five of them, is the answer; a lone 'Z' token is 'Z'; then an
  "answer is X" pattern (letters A-D, any case); then, for short answers,
  the one option whose text occurs in the answer.
* `yes_no` reproduces YOrN_Extraction (vlmeval/dataset/utils/yorn.py).
* `process_punctuation` and `normalize_vqa_answer` reproduce the VQA
  normalisation of vlmeval/smp/misc.py and vlmeval/dataset/utils/vqa_eval.py
  (the official VQA evaluation's punctuation, digit, article and
  contraction rules), including their quirks: a punctuation mark is deleted
  outright, not turned into a space, when it touches a space anywhere in the
  text or the text has a digit-comma-digit; at most 32 sentence periods are
  removed (re.sub's `count` got the flag re.UNICODE = 32).
"""

import re

# Replies that VLMEvalKit maps to the refusal option 'Z'.
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
API_FAILURE = "Failed to obtain answer via API"
_OPTION_PUNCT = ".()[],:;!*#{}"
_OPTION_TABLE = str.maketrans({c: " " for c in _OPTION_PUNCT})
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def infer_option(answer, choices):
    """An option letter named in `answer`, 'Z' for a refusal, or False.

    `choices` maps letters to option texts (only the letters matter here).
    """
    if API_FAILURE in answer:
        return False
    if any(phrase in answer for phrase in REFUSALS):
        return "Z"
    tokens = answer.translate(_OPTION_TABLE).split()
    present = [c for c in choices if c in tokens]
    if len(present) == 1:
        if tokens.index(present[0]) > len(tokens) - 5:
            return present[0]
    elif not present and "Z" in tokens:
        return "Z"
    m = _ANSWER_IS.search(answer)
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    return False


def infer_text(answer, choices):
    """The one option whose text occurs in a short answer, or False.

    The answer (lower-cased) must be at most twice as long as all option
    texts together.
    """
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    hits = [k for k, v in choices.items() if str(v).lower() in answer]
    return hits[0] if len(hits) == 1 else False


def infer_choice(answer, choices):
    """can_infer: the option letter (or 'Z') an answer gives, else False."""
    answer = str(answer)
    return infer_option(answer, choices) or infer_text(answer, choices)


def row_choices(row):
    """{letter: text} for the options present in a row (build_choices)."""
    return {c: row[c] for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if row.get(c) is not None}


# ---------------------------------------------------------------- yes / no

_PUNCT = ';/[]"{}()=+\\_-><@`,?!'  # one mark per character
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP = re.compile(r"(?<!\d)\.(?!\d)")


def process_punctuation(text):
    """VLMEvalKit's process_punctuation (the VQA evaluation's punctuation rule)."""
    out = text
    digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, 32)


def yes_no(answer):
    """'Yes', 'No' or 'Unknown': yes or no as a word, and not both."""
    words = process_punctuation(str(answer).lower()).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return "Yes"
    if has_no and not has_yes:
        return "No"
    return "Unknown"


# ------------------------------------------------------- VQA normalisation

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset(["a", "an", "the"])

# Contractions of the VQA evaluation: each written form maps every spelling
# that lacks exactly one of its apostrophes back to it ("couldnt've" and
# "couldn'tve" -> "couldn't've").  Its entries with capitals (I'm, I've,
# I'd've) never match lower-cased text and are left out; one entry of the
# original goes the other way ("somebody'd" -> "somebodyd") and is kept.
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't
hadn't've hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd
it'd've it'll ma'am mightn't mightn't've might've mustn't must've needn't
not've o'clock oughtn't 'ow's'at shan't she'd've shouldn't shouldn't've
should've somebody'd've somebody'll somebody's someone'd someone'd've
someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas
wasn't we'd've we've weren't what'll what're what's what've when's where'd
where's where've who'd who'd've who'll who's who've why'll why're why's won't
would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll
you're you've should've
""".split()


_CONTRACTIONS = {word[:i] + word[i + 1:]: word
                 for word in _CONTRACTED for i, ch in enumerate(word) if ch == "'"}
_CONTRACTIONS["somebody'd"] = "somebodyd"


def process_digit_article(text):
    """Number words to digits, articles dropped, contractions restored."""
    words = (_NUMBER_WORDS.get(w, w) for w in text.lower().split())
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa_answer(answer):
    """VLMEvalKit's process_answer for VQA scores."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))
