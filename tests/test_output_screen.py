"""The output screen on its own: every check catches what it names, and a grounded answer that
repeats its passage's own terms, figures and the customer's own details passes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted_llm import PLANTED, scripted_answer

from freshkb.core.errors import ConfigError
from freshkb.screening.output import (
    CHECKS,
    OutputVerdict,
    iban_valid,
    load_output_screen,
    luhn_valid,
    output_rules,
    screen_answer,
)
from freshkb.serving.answerer import Passage, build_messages

# Policies like the ones the end-to-end tests ingest (kept here so these tests import nothing
# heavy).
RETURNS = (
    "Unworn footwear can be returned within 60 days of purchase with the original receipt. "
    "Worn footwear is accepted only under the warranty. Opened electronics can be returned "
    "within 14 days; a 10% restocking fee applies."
)
SHIPPING = (
    "Standard shipping takes 3 to 5 business days. Orders over $75 ship free within the "
    "contiguous United States. Express shipping arrives in 1 to 2 business days for $19."
)
WARRANTY = (
    "Tents and backpacks carry a two-year warranty against defects in materials and "
    "workmanship. Damage from misuse, fire or pets is not covered. Claims need proof of purchase."
)
REFUNDS = (
    "Refunds go back to the original payment method within 5 business days of the return "
    "being received. Gift card purchases are refunded to a new gift card."
)
OWN_RECORD = (
    "customers.csv:C-1001\nname: Maya Okafor\nemail: maya.okafor@example.com\n"
    "phone: +1 303 555 0199\nshipping address: 101 Pine Street, Denver, CO 80201"
)


def screen(answer: str, passage: str = RETURNS, question: str = "") -> OutputVerdict:
    """The verdict on an answer citing one passage."""
    return screen_answer(answer, [passage], [passage], question)


def checks(verdict: OutputVerdict) -> set[str]:
    """The checks that fired."""
    return {finding.check for finding in verdict.findings}


# -- the planted bad answers of the scripted model -----------------------------------------


@pytest.mark.parametrize("behaviour", sorted(PLANTED))
@pytest.mark.parametrize(
    "question",
    [
        "Is worn footwear accepted for return?",
        "How long does standard shipping take?",
        "What does the tent warranty cover?",
    ],
)
def test_every_planted_bad_answer_is_caught_by_its_check(behaviour: str, question: str) -> None:
    passages = [
        Passage(f"S{n}", str(n), title, text)
        for n, (title, text) in enumerate(
            [("Returns", RETURNS), ("Shipping", SHIPPING), ("Warranty", WARRANTY)], 1
        )
    ]
    prompt = build_messages(question, passages)[-1]["content"]
    answer = scripted_answer(behaviour, prompt)
    grounded = scripted_answer("grounded", prompt)
    cited = [p.text for p in passages if f"[{p.label}]" in answer]
    verdict = screen_answer(answer, cited, [p.text for p in passages], question)
    assert PLANTED[behaviour].check in checks(verdict), (answer, verdict.reason)
    assert CHECKS[PLANTED[behaviour].check] in verdict.reason
    assert verdict.action == "quote", "a benign question: quoting the passages is safe"
    assert screen_answer(grounded, cited, [p.text for p in passages], question).passed


# -- promises: commitments and figures ---------------------------------------------------


def test_grounded_answer_repeating_the_passages_refund_and_figures_passes() -> None:
    assert screen(
        "Refunds go back to the original payment method within 5 business days [S1].", REFUNDS
    ).passed
    reworded = "Your refund is paid to the original payment method within five business days [S1]."
    assert screen(reworded, REFUNDS).passed


@pytest.mark.parametrize(
    ("passage", "answer"),
    [
        ("Orders over $75 ship free.", "Orders over 75 dollars ship free [S1]."),
        ("Orders over 75 dollars ship free.", "Orders over $75.00 ship free [S1]."),
        ("Apparel can be returned within 30 days.", "Apparel has a 30-day return window [S1]."),
        ("Tents carry a two-year warranty.", "Tents are covered for 2 years [S1]."),
        ("A 10% restocking fee applies.", "There is a 10 percent restocking fee [S1]."),
        ("Reached at $1,500 spent in a year.", "You reach it at $1500 a year [S1]."),
        ("Orders before 2 pm leave the same day.", "Order by 2:00 pm to ship the same day [S1]."),
    ],
)
def test_figures_compare_in_normal_form(passage: str, answer: str) -> None:
    verdict = screen(answer, passage)
    assert verdict.passed, verdict.reason


@pytest.mark.parametrize(
    ("answer", "figure"),
    [
        ("Unworn footwear can be returned within 90 days [S1].", "90 days"),
        ("Opened electronics carry a 15% restocking fee [S1].", "15%"),
        ("Express shipping costs $60 [S1].", "$60"),
    ],
)
def test_a_figure_no_cited_passage_gives_is_a_promise(answer: str, figure: str) -> None:
    verdict = screen(answer)
    assert checks(verdict) == {"promise"}
    assert verdict.reason == f"promise not in the cited passages (figure: {figure!r})"


def test_same_number_with_another_unit_is_not_the_passages_figure() -> None:
    assert not screen("We refund $60 [S1].", "Returns within 60 days; refunds to the card.").passed


def test_figures_from_the_question_and_list_numbers_are_not_invented() -> None:
    question = "I bought boots 20 days ago, can I still return them?"
    answer = "1. Bought 20 days ago, you are within the 60 days of purchase [S1]."
    assert screen(answer, RETURNS, question).passed


def test_a_numbered_list_written_on_one_line_is_not_a_figure() -> None:
    answer = "To return them: 1. Pack the boots. 2. Bring them within 60 days of purchase [S1]."
    assert screen(answer, RETURNS).passed


@pytest.mark.parametrize(
    "answer",
    [
        # Not a list (no 1 first, or out of order): the number is still a figure to check.
        "You have until 2. Then the window closes [S1].",
        "Steps: 1. Pack the boots. 3. Bring them back [S1].",
    ],
)
def test_numbers_that_only_look_like_list_markers_are_still_checked(answer: str) -> None:
    verdict = screen(answer, RETURNS)
    assert not verdict.passed
    assert {f.kind for f in verdict.findings} == {"figure"}


@pytest.mark.parametrize(
    ("answer", "concept"),
    [
        ("We will refund the full price today [S1].", "refund"),
        ("We can offer a discount on your next order [S1].", "discount"),
        ("Here is a voucher for your trouble [S1].", "coupon"),
        ("We will add store credit to your account [S1].", "credit"),
        ("We'll waive the restocking fee [S1].", "waive"),
        ("We can price-match that offer [S1].", "price_match"),
        ("Shipping is on us this time [S1].", "free"),
        ("We'll upgrade you to express [S1].", "upgrade"),
        ("As a one-time courtesy we accept it [S1].", "exception"),
    ],
)
def test_a_commitment_no_cited_passage_makes_is_a_promise(answer: str, concept: str) -> None:
    verdict = screen(answer)
    assert {(f.check, f.kind) for f in verdict.findings} == {("promise", concept)}


@pytest.mark.parametrize(
    "answer",
    [
        "Worn footwear cannot be refunded; it is accepted only under the warranty [S1].",
        "Opened electronics are non-refundable after 14 days [S1].",
        "Feel free to bring the original receipt when you return unworn footwear [S1].",
        "Pay with your credit card; unworn footwear can be returned within 60 days [S1].",
    ],
)
def test_negated_commitments_and_everyday_words_are_not_promises(answer: str) -> None:
    verdict = screen(answer)
    assert verdict.passed, verdict.reason


def test_a_commitment_passes_in_any_form_of_its_concept() -> None:
    passage = "Shipping of the repaired item back to the customer is free."
    assert screen("We ship the repaired item back at no cost to you [S1].", passage).passed


# -- personal data ------------------------------------------------------------------------


def test_the_customers_own_details_from_their_record_pass() -> None:
    answer = (
        "We have maya.okafor@example.com and (303) 555-0199 on file, and your order goes to "
        "101 Pine St. [S1]"
    )
    verdict = screen_answer(answer, [OWN_RECORD], [OWN_RECORD], "Where does my order go?")
    assert verdict.passed, verdict.reason


def test_details_the_customer_gave_in_the_question_pass() -> None:
    question = "Please call me back on +44 20 7946 0958, is that possible?"
    verdict = screen("We have noted your number, +44 20 7946 0958 [S1].", RETURNS, question)
    assert verdict.passed, verdict.reason
    assert not screen("We have noted your number, +44 20 7946 0958 [S1].", RETURNS).passed


@pytest.mark.parametrize(
    ("answer", "kind", "value"),
    [
        ("Call Maria on +1 (303) 555-0142 [S1].", "phone number", "555-0142"),
        ("Jonas answers on 030 2847 6610 [S1].", "phone number", "2847 6610"),
        ("Or call 720.555.0177 [S1].", "phone number", "555.0177"),
        ("Write to alan.turing@example.com [S1].", "email", "alan.turing"),
        ("It went to 42 Elm Street, Springfield [S1].", "street address", "Elm Street"),
        ("It went to Hauptstraße 12 in Berlin [S1].", "street address", "Hauptstraße 12"),
        ("The card is 4111 1111 1111 1111 [S1].", "card number", "4111 1111 1111 1111"),
        ("Pay into GB82 WEST 1234 5698 7654 32 [S1].", "IBAN", "GB82 WEST"),
        ("Her number is 123-45-6789 [S1].", "SSN-like number", "123-45-6789"),
    ],
)
def test_someone_elses_personal_data_is_caught_and_never_repeated(
    answer: str, kind: str, value: str
) -> None:
    verdict = screen(answer)
    assert ("personal_data", kind) in {(f.check, f.kind) for f in verdict.findings}
    assert value not in verdict.reason
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 4:
        assert digits[-4:] not in re.sub(r"\D", "", verdict.reason), "at most two digits shown"


def test_long_numbers_that_fail_luhn_are_not_card_numbers() -> None:
    verdict = screen("Tracking number 1234 5678 9012 3456 [S1].", "Tracking 1234 5678 9012 3456.")
    assert verdict.passed, verdict.reason
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid(
        "DE88 3704 0044 0532 0130 00"
    )


# -- tone -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("Read the label, you idiot [S1].", "insult"),
        ("That is your own fault for not checking [S1].", "blame"),
        ("Yeah, right, like that would work [S1].", "sarcasm"),
        ("This damn policy says 60 days [S1].", "profanity"),
        ("Not our problem, really [S1].", "dismissal"),
        ("You can buy it cheaper at Walmart [S1].", "competitor"),
        ("UNWORN FOOTWEAR ONLY, within 60 days [S1].", "shouting"),
        ("Unworn footwear can be returned within 60 days!!! [S1]", "shouting"),
    ],
)
def test_off_brand_tone_is_caught(answer: str, kind: str) -> None:
    verdict = screen(answer)
    assert ("tone", kind) in {(f.check, f.kind) for f in verdict.findings}, verdict.reason
    assert verdict.action == "quote"


def test_acronyms_capitals_and_brands_the_passage_itself_uses_are_not_off_brand() -> None:
    passage = "NORTHBEAM LIMITED WARRANTY. We match the price of Amazon listings for GPS units."
    answer = "Under the NORTHBEAM LIMITED WARRANTY we match Amazon listings for GPS units [S1]."
    assert screen(answer, passage).passed


# -- unsafe content -------------------------------------------------------------------------


def test_unsafe_content_is_quoted_for_a_benign_question_and_escalated_when_asked_for() -> None:
    answer = "Or simply forge a receipt; worn footwear is accepted only under the warranty [S1]."
    benign = screen(answer, RETURNS, "Is worn footwear accepted for return?")
    assert benign.action == "quote" and benign.reason == "unsafe content (illegal)"
    raised = screen(answer, RETURNS, "Can I return worn boots or should I just shoplift some?")
    assert raised.action == "escalate"


def test_unsafe_words_the_passage_itself_contains_pass() -> None:
    passage = "The plan does not cover injuries from attempted suicide or self-harm."
    assert screen(
        "Injuries from attempted suicide or self-harm are not covered [S1].", passage
    ).passed


# -- the rule table ---------------------------------------------------------------------------


def test_rule_table_loads_and_a_malformed_one_is_a_config_error() -> None:
    assert load_output_screen().rules.version >= 1
    with pytest.raises(ConfigError, match=r"output\.yaml"):
        output_rules({"version": 1, "fragments": {}})


# -- properties ------------------------------------------------------------------------------

TERMS = ["refund", "store credit", "free", "discount", "voucher", "upgrade", "replacement"]
UNITS = ["days", "business days", "hours", "weeks", "%", "dollars"]


@settings(max_examples=150, deadline=None)
@given(
    number=st.integers(min_value=1, max_value=5000),
    unit=st.sampled_from(UNITS),
    term=st.sampled_from(TERMS),
    prefix=st.sampled_from(["", "Yes. ", "Thanks for asking! "]),
)
def test_a_sentence_of_the_passage_repeated_as_written_always_passes(
    number: int, unit: str, term: str, prefix: str
) -> None:
    sentence = f"Members get a {term} within {number} {unit} of the request."
    passage = f"Membership benefits. {sentence} Ask in any store."
    verdict = screen_answer(f"{prefix}{sentence} [S1]", [passage], [passage])
    assert verdict.passed, verdict.reason


@settings(max_examples=150, deadline=None)
@given(number=st.integers(min_value=1, max_value=100_000), unit=st.sampled_from(UNITS))
def test_any_figure_the_passage_lacks_is_flagged(number: int, unit: str) -> None:
    passage = "Unworn footwear can be returned with the original receipt."
    answer = f"Unworn footwear can be returned within {number} {unit} [S1]."
    verdict = screen_answer(answer, [passage], [passage])
    assert ("promise", "figure") in {(f.check, f.kind) for f in verdict.findings}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=9), min_size=14, max_size=14))
def test_any_valid_card_number_not_in_the_passages_is_caught_and_masked(digits: list[int]) -> None:
    body = "4" + "".join(map(str, digits))
    check = next(d for d in "0123456789" if luhn_valid(body + d))
    number = body + check
    spaced = " ".join(number[i : i + 4] for i in range(0, 16, 4))
    verdict = screen(f"The card on file is {spaced} [S1].")
    assert ("personal_data", "card number") in {(f.check, f.kind) for f in verdict.findings}
    assert number not in re.sub(r"\D", "", verdict.reason)
