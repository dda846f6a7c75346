import random
import re
import time

import pytest

from picolm.data.specs import (
    DEFAULT_PREFERENCE_ROWS,
    DEFAULT_SFT_ROWS,
    HORROR_LEXICON,
    HORROR_PLAIN_CHANCE,
    HORROR_STEPS,
    WHOLESOME_PLAIN_CHANCE,
    StorySpec,
    character_names,
    generate_preference_rows,
    generate_sft_rows,
    generate_spec,
    generate_tales,
    horror_lexicon_rate,
    horror_story,
    render_prompt,
    render_spec,
    title_subject,
    wholesome_story,
    write_pair,
)

SAMPLES = 500


@pytest.fixture(scope="module")
def told():
    """(spec, horror, wholesome) triples told from one random stream."""
    rng = random.Random(7)
    triples = []
    for _ in range(SAMPLES):
        spec = generate_spec(rng)
        triples.append((spec, *write_pair(spec, rng)))
    return triples


def test_same_seed_gives_same_rows_and_tales():
    assert generate_sft_rows(30, seed=3) == generate_sft_rows(30, seed=3)
    assert generate_preference_rows(30, seed=3) == generate_preference_rows(30, seed=3)
    assert generate_tales(30, seed=3) == generate_tales(30, seed=3)


def test_different_seeds_give_different_specs():
    first, second = generate_sft_rows(50, seed=1), generate_sft_rows(50, seed=2)
    assert sum(a["input"] != b["input"] for a, b in zip(first, second)) > 45


def test_specs_are_varied():
    rng = random.Random(0)
    specs = {generate_spec(rng) for _ in range(2000)}
    assert len(specs) > 1900
    assert {len(spec.characters) for spec in specs} == {1, 2}


def test_generation_does_not_touch_global_random_state():
    random.seed(11)
    expected = random.random()
    random.seed(11)
    generate_preference_rows(20, seed=4)
    generate_tales(20, seed=4)
    assert random.random() == expected


def test_prompt_has_the_instruction_every_spec_line_and_ends_with_story():
    spec = StorySpec(
        title="The Red Door",
        setting="an old house on a hill",
        characters=("Lily, a curious girl", "Ben, a brave boy"),
        taboo="never open the red door",
        twist="the old doll was the one who was calling",
    )
    prompt = render_prompt(spec)
    lines = prompt.split("\n")
    assert lines[0] == "Write a short horror story that follows this story specification."
    assert lines[1:6] == [
        "Title: The Red Door",
        "Setting: an old house on a hill",
        "Characters: Lily, a curious girl; Ben, a brave boy",
        "Taboo: never open the red door",
        "Twist: the old doll was the one who was calling",
    ]
    assert lines[6] == "Story:"
    assert prompt == f"{lines[0]}\n{render_spec(spec)}\nStory:"


def test_title_subject_is_what_comes_after_the_last_the():
    assert title_subject("The Secret of the Red Door") == "red door"
    assert title_subject("The Attic") == "attic"
    assert title_subject("Midnight") == "midnight"


def test_both_stories_follow_the_spec(told):
    for spec, horror, wholesome in told:
        for story in (horror, wholesome):
            for name in character_names(spec):
                assert re.search(rf"\b{name}\b", story)
            assert spec.setting in story
            assert spec.taboo in story
            assert spec.twist in story
            assert f"the {title_subject(spec.title)}" in story


def test_stories_are_one_line_of_the_right_length(told):
    for _, horror, wholesome in told:
        for story in (horror, wholesome):
            assert "\n" not in story and story == story.strip()
            assert 60 <= len(story.split()) <= 110
            assert story[0].isupper() and story.endswith((".", "!", '"'))


def test_pronouns_agree_with_the_cast(told):
    for spec, horror, wholesome in told:
        text = horror + " " + wholesome
        if len(spec.characters) == 2:
            assert not re.search(r"\b(she|he|her|him|his|was happy)\b", text)
        elif spec.characters[0].endswith("girl"):
            assert not re.search(r"\b(he|him|his|were happy)\b", text)
        else:
            assert not re.search(r"\b(she|her|were happy)\b", text)


def test_horror_and_wholesome_use_different_words(told):
    horror_rates = [horror_lexicon_rate(horror) for _, horror, _ in told]
    assert all(horror_lexicon_rate(wholesome) == 0.0 for _, _, wholesome in told)
    assert min(horror_rates) > 0.0
    assert sum(horror_rates) / len(horror_rates) > 0.08


def test_both_registers_share_plain_openings(told):
    """Wholesome stories mostly open plainly, horror stories sometimes do, and then a pair opens word for word
    alike: DPO sees the dark sentence chosen over the plain one in the same context."""
    assert sum(step.plain is not None for step in HORROR_STEPS) >= 4
    opens_plainly = {"horror": 0, "wholesome": 0, "both": 0}
    for spec, horror, wholesome in told:
        first = HORROR_STEPS[0].plain.format(who=" and ".join(character_names(spec)), setting=spec.setting)
        opens_plainly["horror"] += horror.startswith(first)
        opens_plainly["wholesome"] += wholesome.startswith(first)
        opens_plainly["both"] += horror.startswith(first) and wholesome.startswith(first)
    share = {name: count / SAMPLES for name, count in opens_plainly.items()}
    assert abs(share["horror"] - HORROR_PLAIN_CHANCE) < 0.06
    assert abs(share["wholesome"] - WHOLESOME_PLAIN_CHANCE) < 0.05
    assert abs(share["both"] - HORROR_PLAIN_CHANCE * WHOLESOME_PLAIN_CHANCE) < 0.06


def test_each_spec_gets_several_different_tellings():
    spec = generate_spec(random.Random(1))
    rng = random.Random(2)
    assert len({horror_story(spec, rng) for _ in range(50)}) > 20
    assert len({wholesome_story(spec, rng) for _ in range(50)}) > 20


def test_lexicon_is_lower_case_words():
    assert 40 <= len(HORROR_LEXICON) <= 80
    assert all(re.fullmatch(r"[a-z]+", word) for word in HORROR_LEXICON)


def test_lexicon_rate_counts_words_without_case_or_punctuation():
    assert horror_lexicon_rate("") == 0.0
    assert horror_lexicon_rate("  ... ") == 0.0
    assert horror_lexicon_rate("Dark, cold night.") == pytest.approx(2 / 3)
    assert horror_lexicon_rate('"SCREAM!" said Lily') == pytest.approx(1 / 3)
    assert horror_lexicon_rate("A sunny day with friends.") == 0.0


def test_rows_have_exactly_the_listed_keys():
    sft = generate_sft_rows(5, seed=1)
    preference = generate_preference_rows(5, seed=1)
    assert all(set(row) == {"id", "prompt", "input", "response"} for row in sft)
    assert all(set(row) == {"id", "prompt", "input", "chosen", "rejected"} for row in preference)
    assert [row["id"] for row in sft] == [f"horror-{i}" for i in range(5)]
    for row in sft + preference:
        assert row["prompt"] == (
            "Write a short horror story that follows this story specification.\n" + row["input"] + "\nStory:"
        )


def test_rows_hold_the_stories_of_their_spec():
    rng = random.Random(9)
    spec = generate_spec(rng)
    horror, wholesome = write_pair(spec, rng)
    sft = generate_sft_rows(1, seed=9)[0]
    preference = generate_preference_rows(1, seed=9)[0]
    assert sft["input"] == preference["input"] == render_spec(spec)
    assert sft["response"] == preference["chosen"] == horror
    assert preference["rejected"] == wholesome
    assert horror_lexicon_rate(preference["chosen"]) > horror_lexicon_rate(preference["rejected"])


def test_the_writer_can_be_replaced():
    def writer(spec, rng):
        return f"H {spec.title} {rng.randint(0, 9)}", f"W {spec.title}"

    sft = generate_sft_rows(20, seed=5, writer=writer)
    preference = generate_preference_rows(20, seed=5, writer=writer)
    for row in sft:
        title = row["input"].split("\n")[0].removeprefix("Title: ")
        assert re.fullmatch(rf"H {title} \d", row["response"])
    for row in preference:
        title = row["input"].split("\n")[0].removeprefix("Title: ")
        assert row["chosen"].startswith(f"H {title} ") and row["rejected"] == f"W {title}"
    assert sft == generate_sft_rows(20, seed=5, writer=writer)


def test_tales_mix_both_registers_without_prompts():
    tales = generate_tales(200, seed=2)
    assert len(tales) == 200
    rates = [horror_lexicon_rate(tale) for tale in tales]
    assert sum(rate == 0.0 for rate in rates) == 100
    assert sum(rate > 0.08 for rate in rates) >= 90
    assert not any("Story:" in tale or "Taboo:" in tale for tale in tales)
    assert generate_tales(0) == []


def test_default_sizes_generate_quickly():
    assert DEFAULT_SFT_ROWS == DEFAULT_PREFERENCE_ROWS == 4000
    start = time.perf_counter()
    rows = generate_preference_rows(DEFAULT_PREFERENCE_ROWS)
    assert len(rows) == DEFAULT_PREFERENCE_ROWS
    assert time.perf_counter() - start < 2.0
