"""Answer extraction and normalisation: VLMEvalKit's rules, case by case."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tgllava.eval.extract import (infer_choice, infer_option, infer_text, normalize_vqa_answer,
                                  process_punctuation, yes_no)

ABCD = {"A": "teddy bear", "B": "rabbit", "C": "cat", "D": "dog"}


@pytest.mark.parametrize("answer,expected", [
    ("B", "B"),
    ("(C)", "C"),
    ("C.", "C"),
    ("The answer is (C).", "C"),
    ("**D**", "D"),
    ("Answer: B", "B"),
    # a letter in prose: one letter token, but not among the last five tokens
    ("B is what I would pick, given the fur and the long ears shown", False),
    # two letters present: no single choice
    ("It is B, not A.", False),
    # the lone article "A" counts as the letter A when it is near the end
    ("I see a cat", False),
    ("This is A cat", "A"),
    # "answer is X" rescues a letter far from the end (letters A-D, any case)
    ("The correct answer is **D**, because dogs have floppy ears and wag their tails a lot", "D"),
    ("the answer is a dog, which has floppy ears and a tail it wags when happy", "A"),
    # refusals and the Z option
    ("Sorry, I can't help with images of people yet.", "Z"),
    ("Cannot determine the answer from the image.", "Z"),
    ("Z", "Z"),
    ("Failed to obtain answer via API", False),
    ("I do not know", False),
])
def test_infer_option(answer, expected):
    assert infer_option(answer, ABCD) == expected


def test_infer_option_only_counts_offered_letters():
    assert infer_option("E", {"A": "x", "B": "y"}) is False
    assert infer_option("E", {"A": "x", "B": "y", "E": "z"}) == "E"


@pytest.mark.parametrize("answer,expected", [
    ("a cute teddy bear", "A"),
    ("Rabbit", "B"),
    ("a cat and a dog", False),          # two options named
    ("a spider", False),                 # none
    ("the animal in the picture is most probably a rabbit, judging by the ears", False),  # too long
])
def test_infer_text(answer, expected):
    assert infer_text(answer, ABCD) == expected


def test_infer_choice_letter_first_then_text():
    assert infer_choice("B", ABCD) == "B"
    assert infer_choice("dog", ABCD) == "D"
    assert infer_choice(3, {"A": "3", "B": "4"}) == "A"  # non-strings are str()-ed
    assert infer_choice("I refuse", ABCD) is False


@pytest.mark.parametrize("answer,expected", [
    ("Yes", "Yes"),
    ("yes.", "Yes"),
    ("Yes, there is a dog in the image.", "Yes"),
    ("No.", "No"),
    ("NO", "No"),
    ("No, it is not.", "No"),
    ("Yes and no", "Unknown"),
    ("yes/no", "Unknown"),
    ("I cannot tell from the picture", "Unknown"),
    ("Nope", "Unknown"),
    ("", "Unknown"),
])
def test_yes_no(answer, expected):
    assert yes_no(answer) == expected


def test_process_punctuation_quirks():
    # punctuation touching a space anywhere: every such mark is deleted
    assert process_punctuation("a, b") == "a b"
    # no space next to it: it becomes a space
    assert process_punctuation("a,b") == "a b"
    # a digit-comma-digit anywhere: all marks deleted
    assert process_punctuation("1,000 (approx)") == "1000 approx"
    # sentence periods go, decimal points stay
    assert process_punctuation("It is 3.5 m.") == "It is 3.5 m"
    # at most 32 periods are removed (re.sub count = re.UNICODE)
    assert process_punctuation("." * 40) == "." * 8


@pytest.mark.parametrize("answer,expected", [
    ("Two dogs.", "2 dogs"),
    ("The Cat", "cat"),
    ("an apple", "apple"),
    ("dont", "don't"),
    ("couldnt've", "couldn't've"),
    ("somebody'd", "somebodyd"),
    ("none", "0"),
    ("  Stop\tsign\n", "stop sign"),
    ("coca-cola", "coca cola"),
])
def test_normalize_vqa_answer(answer, expected):
    assert normalize_vqa_answer(answer) == expected
