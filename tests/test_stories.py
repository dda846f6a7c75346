import random
import re

import pytest

from picolm.data.stories import (
    DEFAULT_NUM_STORIES,
    PROBLEMS,
    generate_stories,
    generate_story,
    plan_story,
    render,
)

MALE_WORDS = re.compile(r"\b(he|him|his|himself)\b", re.IGNORECASE)
FEMALE_WORDS = re.compile(r"\b(she|her|herself)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def planned():
    """(plan, story) pairs told from one random stream."""
    rng = random.Random(123)
    pairs = []
    for _ in range(2000):
        plan = plan_story(rng)
        pairs.append((plan, render(plan, rng)))
    return pairs


def test_same_seed_gives_same_stories():
    assert generate_stories(50, seed=3) == generate_stories(50, seed=3)


def test_different_seeds_give_different_stories():
    first, second = generate_stories(50, seed=1), generate_stories(50, seed=2)
    assert sum(a != b for a, b in zip(first, second)) > 45


def test_number_of_stories_is_respected():
    assert len(generate_stories(7)) == 7
    assert generate_stories(0) == []


def test_generate_story_plans_then_renders():
    rng = random.Random(5)
    plan = plan_story(rng)
    assert generate_story(random.Random(5)) == render(plan, rng)


def test_each_story_is_one_trimmed_line_of_simple_length():
    for story in generate_stories(500, seed=4):
        assert "\n" not in story and "\r" not in story
        assert story == story.strip()
        assert 80 <= len(story.split()) <= 300
        assert story.endswith((".", "!", '"'))


def test_girls_are_never_he_and_boys_are_never_she(planned):
    casts = {"female": 0, "male": 0}
    for plan, story in planned:
        genders = {c.pronouns.subject for c in (plan.hero, plan.helper, plan.adult)}
        if genders == {"she"}:
            casts["female"] += 1
            assert not MALE_WORDS.search(story), story
        elif genders == {"he"}:
            casts["male"] += 1
            assert not FEMALE_WORDS.search(story), story
    assert min(casts.values()) > 100  # the check above ran on many stories


def test_story_opens_by_introducing_the_hero(planned):
    for plan, story in planned:
        opening = " ".join(re.split(r"(?<=[.!?])\s+", story)[:2])
        assert f"little {plan.hero.kind}" in opening and plan.hero.name in opening, story


def test_the_object_comes_back_at_the_end(planned):
    for plan, story in planned:
        half = len(story) // 2
        assert plan.item.noun in story[:half], story
        assert plan.item.noun in story[half:], story


def test_problems_fit_their_objects(planned):
    for plan, _ in planned:
        assert plan.problem.needs in plan.item.tags
    assert {plan.problem.name for plan, _ in planned} == {problem.name for problem in PROBLEMS}


def test_stories_are_all_distinct():
    stories = generate_stories(1000, seed=7)
    assert len(set(stories)) == len(stories)


def test_vocabulary_is_small_but_not_tiny(planned):
    words = {word for _, story in planned for word in re.findall(r"[a-z'-]+", story.lower())}
    assert 400 <= len(words) <= 1500


def test_default_corpus_is_large_enough():
    assert DEFAULT_NUM_STORIES > 0
    total_words = sum(len(story.split()) for story in generate_stories())
    assert total_words >= 1_600_000
