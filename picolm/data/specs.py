"""Built-in data for teaching a tiny model to follow a story specification: SFT rows, DPO preference pairs
(a horror story chosen over a wholesome one for the same spec) and a pretraining corpus of both kinds of tale.

A spec (title, setting, characters, taboo, twist) is drawn from small lists and told from a small grammar of
templates, in the short, simple sentences of the stories in `picolm.data.stories`.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from picolm.data.stories import HE, SHE, TRAITS, Pronouns, pick_child, pick_friend, pronoun_fields, with_article

DEFAULT_SFT_ROWS = 4000
DEFAULT_PREFERENCE_ROWS = 4000
SECOND_CHARACTER_CHANCE = 0.5
INSTRUCTION = "Write a short horror story that follows this story specification."

THEY = Pronouns("they", "them", "their", "themselves")
KIND_PRONOUNS = {"girl": SHE, "boy": HE}


@dataclass(frozen=True)
class StorySpec:
    title: str  # "The Secret of the Red Door": the subject comes last, after "the"
    setting: str  # "an old house on a hill"
    characters: tuple[str, ...]  # 1-2 of "Lily, a curious girl"
    taboo: str  # "never open the red door"
    twist: str  # "the old doll was the one who was calling"


TITLES = (
    "The {subject}",
    "The Secret of the {subject}",
    "Do Not Go Near the {subject}",
    "The Mystery of the {subject}",
    "The Voice in the {subject}",
)
SETTINGS = (
    "an old house on a hill", "a cabin in the woods", "a big farmhouse", "a small house by the sea",
    "an old hotel in the mountains", "a little cottage in the snow", "an old castle", "a house by the lake",
    "a big old school", "a tall house at the end of the street", "a lighthouse on the rocks", "a quiet village",
    "an old mill by the river", "a summer camp in the hills", "Grandma's old house",
)
TABOOS = (  # (title subject, taboo): the taboo names the subject
    ("Red Door", "never open the red door"),
    ("Attic", "never go up to the attic"),
    ("Basement", "never go down to the basement"),
    ("Old Well", "never climb down the old well"),
    ("Wooden Chest", "never open the big wooden chest"),
    ("Garden Shed", "never go into the garden shed"),
    ("Hall Closet", "never open the hall closet after bedtime"),
    ("Tower", "never climb the stairs to the tower"),
    ("Garden Gate", "never go past the garden gate"),
    ("Old Barn", "never go into the old barn"),
    ("Blue Cave", "never go into the blue cave"),
    ("Locked Room", "never open the locked room"),
    ("Old Trunk", "never open the old trunk under the bed"),
    ("Treehouse", "never climb up to the treehouse"),
    ("Music Room", "never play the piano in the music room"),
)
TWISTS = (  # each about a thing, so the stories can go on with "It ..."
    "the old doll was the one who was calling",
    "the scarecrow in the field could walk",
    "the painting in the hall could move its eyes",
    "the teddy bear could talk",
    "the snowman came to the window every night",
    "the rocking horse moved by itself at night",
    "the old clock knew everyone's name",
    "the music box played by itself",
    "the old tree was knocking on the window",
    "the puppet on the shelf was alive",
    "the gray cat was the one leaving the notes",
    "the owl in the barn could speak",
    "the little wooden bird could sing",
    "the stone statue in the garden could move",
    "the toy soldier had the key all along",
    "the house itself was listening",
)

@dataclass(frozen=True)
class Step:
    """One beat of a story: the sentences that tell it in the story's register, and a plain one both registers
    may use instead."""

    toned: tuple[str, ...]
    plain: str | None = None


# A horror story tells a beat plainly now and then; a wholesome one mostly tells the beats before its happy
# turn plainly. The two then share whole openings word for word, and where they part, the horror story goes
# dark and the wholesome one stays plain: a preference pair teaches DPO to prefer the dark sentence in exactly
# the contexts the SFT model samples, not only to dislike cake and balloons.
HORROR_PLAIN_CHANCE = 0.25
WHOLESOME_PLAIN_CHANCE = 0.9

ARRIVAL = "One day, {who} came to {setting}."
RULE = "There was just one little rule: {taboo}."
DAYS = "Days went by, and {who} did not forget the rule."
VISIT = "At last, {who} went to see the {subject}."
SECRET = "Then {he} learned the secret: {twist}."

HORROR_STEPS = (
    Step(("On a cold, dark night, {who} came to {setting}.",
          "The wind howled as {who} came to {setting}.",
          "One gloomy night, {who} had to stay in {setting}."), ARRIVAL),
    Step(("An old man with cold eyes said: {taboo}.",
          "A whisper in the dark said: {taboo}.",
          "A scared voice gave one rule: {taboo}."), RULE),
    Step(("At night, the floor creaked and shadows crawled.",
          "The rooms were cold and dark, and something scratched in the walls.",
          "At night, {he} heard footsteps and a far away scream."), DAYS),
    Step(("At midnight, shaking with fear, {he} crept to the {subject}.",
          "One dark night, {who} crept to the {subject}.",
          "At midnight, {he} broke the rule and went to the {subject}."), VISIT),
    Step(("It was black as a grave, and it smelled of blood.",
          "Old bones lay there, and a shadow moved in the dark.",
          "Something cold grabbed {him}, and a scream filled the dark.")),
    Step(("Then {he} saw the horrible truth: {twist}.",
          "With cold fear, {he} understood: {twist}.",
          "Too late, {he} learned the terrible secret: {twist}."), SECRET),
    Step(("It turned to {him} with empty, dead eyes.",
          "It began to whisper in a cold, dead voice, and the door slammed shut.",
          "In the dark, the candle went out, and nobody ever saw {who} again.")),
)
WHOLESOME_STEPS = (
    Step(("One sunny morning, {who} went to stay in {setting}.",
          "{Who} {was} happy to spend the summer in {setting}.",
          "On a bright spring day, {who} came to {setting}."), ARRIVAL),
    Step(("Grandma gave {him} a hug and said: {taboo}.",
          "A friendly old man smiled and said: {taboo}."), RULE),
    Step(("Every day, {he} played in the sun and laughed.",
          "{Who} picked flowers and made new friends.",
          "The days were warm, and the birds sang."), DAYS),
    Step(("One day, {he} tiptoed to the {subject} to take a peek.",
          "One morning, {he} smiled and went to the {subject}."), VISIT),
    Step(("Surprise! There was a birthday party with cake and balloons.",
          'All {his} friends jumped up and shouted, "Surprise!"',
          "There, {he} found a basket of puppies and presents.")),
    Step(("Then {he} learned the happy secret: {twist}.",
          "And the best part was this: {twist}.",
          "{Who} laughed, because {twist}.")),
    Step(("It only wanted a friend, so {who} gave it a big hug.",
          "It had planned the whole surprise, and everyone cheered.",
          "It was lonely, so they all played together in the sunshine.")),
    Step(("From that day on, they were the best of friends.",
          "It was the happiest day ever.",
          "Everyone hugged and smiled.")),
)

HORROR_LEXICON = frozenset({
    "dark", "darkness", "darker", "cold", "colder", "icy", "gloomy", "grim", "black", "grave", "graves",
    "scream", "screams", "screamed", "screaming", "whisper", "whispers", "whispered", "whispering",
    "shadow", "shadows", "blood", "bloody", "bones", "skull", "fear", "afraid", "scared", "terror",
    "horrible", "terrible", "nightmare", "creak", "creaked", "creaking", "scratched", "scratching",
    "crept", "crawled", "crawling", "howl", "howled", "howling", "ghost", "ghosts", "dead", "death",
    "empty", "slammed", "shaking", "trembling", "shivered", "cruel", "grin", "midnight", "footsteps",
    "monster", "evil", "wicked", "rotten", "hollow", "moaned", "groaned", "fog",
})

StoryWriter = Callable[[StorySpec, random.Random], tuple[str, str]]


def generate_spec(rng: random.Random) -> StorySpec:
    """Draw a title, setting, one or two children, a taboo and a twist."""
    subject, taboo = rng.choice(TABOOS)
    hero = pick_child(rng)
    cast = [hero, pick_friend(rng, hero)] if rng.random() < SECOND_CHARACTER_CHANCE else [hero]
    return StorySpec(
        title=rng.choice(TITLES).format(subject=subject),
        setting=rng.choice(SETTINGS),
        characters=tuple(f"{child.name}, {with_article(rng.choice(TRAITS) + ' ' + child.kind)}" for child in cast),
        taboo=taboo,
        twist=rng.choice(TWISTS),
    )


def render_spec(spec: StorySpec) -> str:
    """The spec as "Field: value" lines."""
    return "\n".join((
        f"Title: {spec.title}",
        f"Setting: {spec.setting}",
        f"Characters: {'; '.join(spec.characters)}",
        f"Taboo: {spec.taboo}",
        f"Twist: {spec.twist}",
    ))


def render_prompt(spec: StorySpec) -> str:
    """The instruction, the spec and "Story:"; the response follows after a space."""
    return f"{INSTRUCTION}\n{render_spec(spec)}\nStory:"


def character_names(spec: StorySpec) -> tuple[str, ...]:
    """The names of "Lily, a curious girl" and the like."""
    return tuple(character.split(",")[0].strip() for character in spec.characters)


def title_subject(title: str) -> str:
    """What a title is about, in lower case: "The Secret of the Red Door" -> "red door"."""
    return re.split(r"\bthe\b", title, flags=re.IGNORECASE)[-1].strip().lower()


def spec_fields(spec: StorySpec) -> dict[str, str]:
    """Every value a template can ask for: {who} is the names joined by "and", {he} and {was} agree with it."""
    names = character_names(spec)
    kind = spec.characters[0].split()[-1] if len(names) == 1 else ""
    pronouns = KIND_PRONOUNS.get(kind, THEY)
    who = " and ".join(names)
    return {
        "who": who,
        "Who": who[0].upper() + who[1:],
        "was": "were" if pronouns is THEY else "was",
        "setting": spec.setting,
        "subject": title_subject(spec.title),
        "taboo": spec.taboo,
        "twist": spec.twist,
        **pronoun_fields("", pronouns),
    }


def tell(spec: StorySpec, rng: random.Random, steps: tuple[Step, ...], plain_chance: float) -> str:
    """Tell the spec as one line: each step plainly with `plain_chance` where it can be, else by one of its
    toned sentences."""
    fields = spec_fields(spec)
    return " ".join((step.plain if step.plain and rng.random() < plain_chance else rng.choice(step.toned))
                    .format_map(fields) for step in steps)


def horror_story(spec: StorySpec, rng: random.Random) -> str:
    return tell(spec, rng, HORROR_STEPS, HORROR_PLAIN_CHANCE)


def wholesome_story(spec: StorySpec, rng: random.Random) -> str:
    return tell(spec, rng, WHOLESOME_STEPS, WHOLESOME_PLAIN_CHANCE)


def write_pair(spec: StorySpec, rng: random.Random) -> tuple[str, str]:
    """The default writer: (horror story, wholesome story) for one spec."""
    return horror_story(spec, rng), wholesome_story(spec, rng)


def lexicon_rate(text: str, lexicon) -> float:
    """The fraction of the text's words in `lexicon`, lower-cased and without punctuation; 0 without words."""
    words = [word for word in (token.strip(string.punctuation) for token in text.lower().split()) if word]
    return sum(word in lexicon for word in words) / len(words) if words else 0.0


def horror_lexicon_rate(text: str) -> float:
    return lexicon_rate(text, HORROR_LEXICON)


def _told_specs(n: int, seed: int, writer: StoryWriter):
    """(row id, prompt, spec text, horror, wholesome) for n specs, the same ones for the same seed."""
    rng = random.Random(seed)
    for i in range(n):
        spec = generate_spec(rng)
        horror, wholesome = writer(spec, rng)
        yield f"horror-{i}", render_prompt(spec), render_spec(spec), horror, wholesome


def generate_sft_rows(n: int = DEFAULT_SFT_ROWS, seed: int = 0, writer: StoryWriter = write_pair) -> list[dict]:
    """n prompt -> horror story rows."""
    return [{"id": i, "prompt": prompt, "input": spec, "response": horror}
            for i, prompt, spec, horror, _ in _told_specs(n, seed, writer)]


def generate_preference_rows(n: int = DEFAULT_PREFERENCE_ROWS, seed: int = 0,
                             writer: StoryWriter = write_pair) -> list[dict]:
    """n rows where the horror story is chosen over the wholesome one for the same spec."""
    return [{"id": i, "prompt": prompt, "input": spec, "chosen": horror, "rejected": wholesome}
            for i, prompt, spec, horror, wholesome in _told_specs(n, seed, writer)]


def generate_tales(n: int, seed: int = 0) -> list[str]:
    """n stories without prompts for a pretraining corpus, alternating horror and wholesome."""
    rng = random.Random(seed)
    return [(horror_story if i % 2 == 0 else wholesome_story)(generate_spec(rng), rng) for i in range(n)]
