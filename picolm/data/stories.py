"""Built-in corpus of simple, TinyStories-like children's stories, one story per line.

Each story is planned (hero, helper, object, place, problem) and then told from a small grammar of templates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_NUM_STORIES = 13_000  # about 2.1M words, about 2.6M tokens under a 4k byte-level BPE
MORAL_CHANCE = 0.8


@dataclass(frozen=True)
class Pronouns:
    subject: str
    object: str
    possessive: str
    reflexive: str


SHE = Pronouns("she", "her", "her", "herself")
HE = Pronouns("he", "him", "his", "himself")


@dataclass(frozen=True)
class Character:
    name: str  # what others call them: "Lily", "Mom"
    kind: str  # "girl", "dog", "mom"
    pronouns: Pronouns


@dataclass(frozen=True)
class Item:
    noun: str
    adjectives: tuple[str, ...]
    tags: tuple[str, ...]  # which problems the item can be part of


@dataclass(frozen=True)
class Place:
    name: str
    preposition: str  # "at the park", "in the forest"
    sights: tuple[str, ...]  # plural noun phrases


@dataclass(frozen=True)
class Problem:
    """What goes wrong and how it is put right; each step is told by one of its variants."""

    name: str
    needs: str  # tag the story's item must have
    helper: str  # "friend", "adult" or "any"
    trouble: tuple[tuple[str, ...], ...]
    resolution: tuple[tuple[str, ...], ...]
    lessons: tuple[str, ...]
    away: bool = True  # the story ends away from home, on the day of the outing


@dataclass(frozen=True)
class StoryPlan:
    hero: Character
    trait: str
    adult: Character  # the hero's grown-up
    helper: Character  # the friend or the grown-up who helps
    item: Item
    adjective: str
    place: Place
    problem: Problem


GIRL_NAMES = (
    "Lily", "Mia", "Sue", "Anna", "Emma", "Lucy", "Sara", "Amy", "Zoe", "Ella", "Rose", "Kate",
    "Lila", "Molly", "Ruby", "Jane", "Sophie", "Nina", "Ava", "Chloe", "Grace", "Ivy", "Hannah", "Lisa",
)
BOY_NAMES = (
    "Tom", "Ben", "Sam", "Tim", "Jack", "Leo", "Jake", "Bob", "Finn", "Joe", "Dan", "Luke",
    "Noah", "Owen", "Theo", "Eli", "Adam", "Ryan", "Jim", "Mark", "Nick", "Paul", "Henry", "Max",
)
FEMALE_PET_NAMES = ("Bella", "Coco", "Daisy", "Luna", "Rosie", "Penny", "Lulu", "Fluffy")
MALE_PET_NAMES = ("Spot", "Buddy", "Rex", "Pip", "Milo", "Toby", "Rocky", "Oscar", "Sparky", "Bruno")
ANIMALS = (
    "dog", "cat", "bunny", "bear", "duck", "frog", "mouse", "fox",
    "pig", "lamb", "puppy", "kitten", "squirrel", "owl",
)
ADULTS = (
    Character("Mom", "mom", SHE),
    Character("Dad", "dad", HE),
    Character("Grandma", "grandma", SHE),
    Character("Grandpa", "grandpa", HE),
)
TRAITS = ("happy", "kind", "curious", "playful", "brave", "sweet", "cheerful", "gentle", "silly", "friendly")
HOBBIES = (
    "play outside", "sing songs", "run and jump", "look at the clouds", "draw pictures", "dance",
    "splash in puddles", "pick flowers", "build with blocks", "read books", "count the stars",
    "play games", "climb trees", "watch the birds", "bake cookies", "go on long walks",
    "look for bugs", "blow bubbles", "play hide and seek", "make new friends",
)
COLORS = ("red", "blue", "yellow", "pink", "purple", "orange", "white", "green")
FLOWERS = ("sunflower", "rose", "tulip", "daisy", "lily")
TREATS = ("sandwich", "cookie", "muffin", "apple", "banana", "cake")
COUNTS = ("two", "three", "four", "five")
WEATHERS = ("sunny", "warm", "bright", "lovely", "beautiful", "nice", "cool", "clear")
TIMES = ("day", "morning", "afternoon")

ITEMS = (
    Item("ball", ("red", "blue", "bouncy", "big", "striped"), ("small", "tree", "dirty", "lost")),
    Item("kite", ("red", "yellow", "rainbow", "green"), ("small", "fly", "tree", "break")),
    Item("balloon", ("red", "blue", "yellow", "shiny"), ("small", "fly", "tree")),
    Item("hat", ("red", "blue", "straw", "big"), ("small", "fly", "tree", "dirty", "lost")),
    Item("scarf", ("warm", "pink", "long", "striped"), ("small", "fly", "tree", "dirty", "lost")),
    Item("teddy bear", ("brown", "soft", "fluffy", "old"), ("small", "cuddle", "dirty", "lost")),
    Item("doll", ("pretty", "little", "soft", "rag"), ("small", "cuddle", "dirty", "lost", "break")),
    Item("blanket", ("soft", "warm", "blue", "cozy"), ("small", "cuddle", "dirty")),
    Item("toy car", ("red", "fast", "little", "shiny"), ("small", "break", "lost")),
    Item("toy boat", ("little", "blue", "wooden"), ("small", "break", "lost")),
    Item("toy truck", ("big", "yellow", "green"), ("small", "break", "dirty")),
    Item("toy train", ("wooden", "red", "long"), ("small", "break", "lost")),
    Item("robot", ("shiny", "silver", "little", "talking"), ("small", "break", "lost")),
    Item("drum", ("little", "red", "loud"), ("small", "break")),
    Item("book", ("big", "blue", "funny", "picture"), ("small", "lost", "dirty")),
    Item("bucket", ("red", "little", "yellow"), ("small", "lost")),
    Item("shovel", ("little", "green", "blue"), ("small", "lost")),
    Item("cup", ("little", "pink", "blue"), ("small", "break")),
    Item("umbrella", ("yellow", "red", "big", "spotted"), ("small", "fly")),
    Item("backpack", ("green", "blue", "little"), ("small", "lost", "dirty")),
    Item("toy bunny", ("soft", "white", "fluffy"), ("small", "cuddle", "dirty", "lost")),
    Item("toy dinosaur", ("green", "big", "purple"), ("small", "break", "lost")),
    Item("spinning top", ("red", "bright", "little"), ("small", "lost")),
    Item("bell", ("little", "shiny", "golden"), ("small", "lost")),
    Item("necklace", ("shiny", "pretty", "bead"), ("small", "lost")),
    Item("shell", ("pink", "shiny", "pretty"), ("small", "lost")),
    Item("crown", ("golden", "shiny", "paper"), ("small", "lost", "break")),
    Item("magic wand", ("sparkly", "pink", "star"), ("small", "lost", "break")),
    Item("pillow", ("soft", "fluffy", "round"), ("small", "cuddle")),
    Item("toy plane", ("little", "white", "red"), ("small", "fly", "tree", "break")),
    Item("frisbee", ("red", "blue", "orange"), ("small", "tree", "lost")),
    Item("jump rope", ("long", "pink", "red"), ("small", "lost")),
    Item("yo-yo", ("red", "blue", "shiny"), ("small", "lost", "break")),
    Item("whistle", ("little", "shiny", "silver"), ("small", "lost")),
    Item("music box", ("little", "pretty", "wooden"), ("small", "break")),
    Item("toy horse", ("wooden", "brown", "little"), ("small", "break", "lost", "cuddle")),
    Item("rubber duck", ("yellow", "little", "squeaky"), ("small", "lost")),
    Item("coat", ("warm", "red", "new"), ("small", "dirty", "lost")),
    Item("marble", ("shiny", "blue", "glass"), ("small", "lost")),
    Item("toy lion", ("soft", "yellow", "fluffy"), ("small", "cuddle", "dirty", "lost")),
    Item("bike", ("red", "blue", "new", "shiny"), ("ride",)),
    Item("scooter", ("pink", "green", "new", "blue"), ("ride",)),
    Item("skateboard", ("orange", "green", "new", "black"), ("ride",)),
)

PLACES = (
    Place("park", "at", ("kids on the swings", "ducks on a little pond", "tall green trees")),
    Place("beach", "at", ("big blue waves", "white shells in the sand", "birds over the water")),
    Place("forest", "in", ("tall old trees", "little brown squirrels", "funny mushrooms")),
    Place("farm", "on", ("cows in the grass", "pink pigs in the mud", "hens with little chicks")),
    Place("garden", "in", ("red and yellow flowers", "busy bees", "little bugs on the leaves")),
    Place("pond", "at", ("green frogs on lily pads", "ducks swimming in a line", "fish in the water")),
    Place("lake", "at", ("boats on the water", "big white swans", "flat rocks by the shore")),
    Place("river", "at", ("fish jumping up", "smooth stones in the water", "ducks floating by")),
    Place("hill", "on", ("soft green grass", "white clouds close by", "yellow flowers")),
    Place("meadow", "in", ("tall grass", "pretty butterflies", "wild flowers")),
    Place("zoo", "at", ("big gray elephants", "funny monkeys", "tall giraffes")),
    Place("playground", "at", ("slides and swings", "kids playing tag", "big sandboxes")),
    Place("lighthouse", "at", ("big white waves", "seagulls in the sky", "boats far away")),
    Place("field", "in", ("tall sunflowers", "rabbits in the grass", "kites in the sky")),
    Place("orchard", "in", ("trees full of red apples", "bees near the blossoms", "baskets of pears")),
    Place("fair", "at", ("bright lights", "horses on a merry-go-round", "big balloons")),
    Place("woods", "in", ("old trees", "singing birds", "little paths")),
    Place("schoolyard", "in", ("kids playing ball", "chalk pictures on the ground", "swings and slides")),
    Place("town square", "in", ("pigeons by the fountain", "people selling flowers", "kids eating ice cream")),
    Place("mountain", "on", ("big gray rocks", "tiny flowers", "clouds near the top")),
    Place("market", "at", ("boxes of fruit", "people selling bread", "colorful flowers")),
    Place("camp", "at", ("little tents", "tall pine trees", "logs around a fire pit")),
    Place("valley", "in", ("green grass", "sheep eating", "little streams")),
    Place("village", "in", ("little houses", "friendly people", "cats on the walls")),
    Place("barn", "in", ("big piles of hay", "sleepy cats", "brown horses")),
)

OPENINGS = (
    "Once upon a time, there was {a_hero} named {name}.",
    "Once upon a time, in a small house, there lived {a_hero} named {name}.",
    "There once was {a_hero} named {name}.",
    "Once upon a time, there was {a_hero}. {His} name was {name}.",
    "{name} was {a_hero} who lived near the {place}.",
    "In a little town, there lived {a_hero} named {name}.",
    "Once there was {a_hero} named {name}, who lived with {his} {adult}.",
)
LIKES = (
    "{He} loved to {hobby}.",
    "More than anything, {he} liked to {hobby}.",
    "{name} liked to {hobby} and {hobby2}.",
    "{He} was always happy when {he} could {hobby}.",
    "Every day, {name} wanted to {hobby}.",
)
ITEM_INTROS = (
    "{He} had {a_obj} that {he} loved very much.",
    "{His} favorite thing in the whole world was {his} {obj}.",
    "{He} took {his} {obj} with {him} everywhere.",
    "{name} had {a_obj}, and {he} played with it every day.",
    "{His} {adult} had given {him} {a_obj}, and {he} loved it so much.",
)
OUTINGS = (
    "One {weather} {time}, {name} went to the {place} with {his} {adult}.",
    "One {weather} {time}, {name} and {his} {adult} walked to the {place}.",
    "One {weather} {time}, {name} took {his} {noun} to the {place}.",
    "On a {weather} {time}, {his} {adult} took {him} to the {place}.",
    "One {weather} {time}, {name} could not wait to go to the {place}.",
    '"Can we go to the {place} today?" {name} asked one {weather} {time}. "Yes, let\'s go," said {his} {adult}.',
)
SIGHTS = (
    "{At_place}, {name} saw {sight} and {sight2}.",
    "{name} loved the {place}. There were {sight} and {sight2}.",
    "The {place} was full of {sight} and {sight2}.",
    "{name} looked around and saw {sight} and {sight2}.",
)
ENDINGS = (
    "From that day on, {name} took extra good care of {his} {obj}.",
    "After that, {name} always kept {his} {obj} close.",
    "{name} gave {his} {obj} a big hug and smiled.",
    "{name} loved {his} {obj} more than ever.",
)
AWAY_ENDINGS = (  # for stories that end away from home, on the same day
    "That night, {name} went to sleep with {his} {noun} right next to {him}.",
    "{name} went home with {his} {obj}, tired but very happy.",
    "It was the best day ever, and {name} held {his} {noun} all the way home.",
    "Before bed, {name} told {his} {adult} all about the day and gave {his} {noun} a goodnight hug.",
    "{name} smiled and hugged {his} {obj}, because it had been a very good day.",
    "When the sun went down, {name} walked home with {his} {obj} and a big smile.",
)
MORALS = (
    "{name} learned that {lesson}.",
    "Now {name} knew that {lesson}.",
    "The moral of the story is that {lesson}.",
    "And {name} never forgot that {lesson}.",
)

PROBLEMS = (
    Problem(
        "stuck in a tree", "tree", "any",
        trouble=(
            (
                "{name} threw {his} {noun} up high. The {noun} went up, up, up and got stuck in a tall tree.",
                "A strong wind blew {his} {obj} away, and it landed high up in a big tree.",
                "{name} was playing with {his} {obj} near an old tree. Oops! The {noun} got stuck on a high branch.",
            ),
            (
                '"Oh no!" cried {name}. "My {noun} is stuck!"',
                '{name} jumped as high as {he} could, but {he} could not reach it. "Please come down, '
                '{noun}!" {he} said.',
                "{name} tried to climb the tree, but it was too tall. {He} sat down and felt very sad.",
            ),
        ),
        resolution=(
            (
                "Just then, {helper_intro} came by.",
                "{Helper_intro} saw that {name} was sad and came over.",
                "{Helper_intro} heard {him} and came to help.",
            ),
            (
                '"Don\'t worry, {name}," said {helper}. "I will help you get your {noun}."',
                '"I have an idea!" said {helper}.',
                '"We can get it down together," said {helper} with a smile.',
            ),
            (
                "{h_He} found a long stick and gave the branch a little shake. Down fell the {noun}!",
                "{h_He} got a ladder, climbed up slowly, and took the {noun} off the branch.",
                "{h_He} lifted {name} up high, and {name} grabbed the {noun} with both hands.",
            ),
            (
                '{name} hugged {his} {noun}. "Thank you, {hcall}!" {he} said.',
                "{name} was so happy to have {his} {noun} back. {He} gave {helper} a big hug.",
            ),
        ),
        lessons=(
            "it is good to ask for help when you need it",
            "a problem gets smaller when someone helps you",
            "there is always a way if you work together",
        ),
    ),
    Problem(
        "lost item", "lost", "any",
        trouble=(
            (
                "When it was time to go home, {name} looked for {his} {obj}, but it was gone!",
                "{name} put {his} {noun} down to pick a flower. When {he} turned back, the {noun} was not there!",
                "After a while, {name} reached for {his} {obj}, but {his} hands found nothing. The {noun} was lost!",
            ),
            (
                '"Where is my {noun}?" {he} asked. {He} looked in the grass and under the bench, but it was not there.',
                "{name} looked behind every tree and every rock. {He} began to cry.",
                '{name} felt very sad. "I miss my {noun}," {he} said in a small voice.',
            ),
        ),
        resolution=(
            (
                "{Helper_intro} came and held {his} hand.",
                "Just then, {helper_intro} came by and asked what was wrong.",
            ),
            (
                '"Let\'s look together," said {helper}.',
                '"Think hard, {name}. Where did you play last?" asked {helper}.',
                '"Two pairs of eyes are better than one," said {helper}.',
            ),
            (
                "{name} and {helper} looked high and low. At last, {helper} saw something under a big bush. "
                "It was the {noun}!",
                "{name} thought hard. Then {he} remembered the little bridge. They ran there, "
                "and there was the {noun}!",
                "Then they heard a happy bark. A little puppy was sitting next to the {noun}, wagging its tail.",
            ),
            (
                '{name} held {his} {noun} tight. "I will take better care of you," {he} said.',
                '"Thank you, {hcall}!" said {name}. {He} was so happy to have {his} {noun} back.',
            ),
        ),
        lessons=(
            "it is important to take good care of your things",
            "you should never give up",
            "looking together is better than looking alone",
        ),
    ),
    Problem(
        "broken item", "break", "any",
        trouble=(
            (
                "{name} was playing with {his} {obj} when it fell on a hard rock. Crack! The {noun} broke.",
                "{name} dropped {his} {obj}, and a piece came off. The {noun} was broken.",
                "{name} played too rough with {his} {obj}, and it broke in two.",
            ),
            (
                '"My {noun} is broken!" {name} cried. Big tears rolled down {his} face.',
                "{name} sat down and looked at the broken {noun}. {He} felt very sad.",
                '"Now I can not play with it," said {name}, and {he} began to cry.',
            ),
        ),
        resolution=(
            (
                "{Helper_intro} came over to see what was wrong.",
                "Just then, {helper_intro} walked over.",
            ),
            (
                '"Let me see," said {helper}. "I think we can fix your {noun}."',
                '"Don\'t be sad, {name}," said {helper}. "Broken things can be fixed."',
            ),
            (
                "{h_He} got some glue and put the pieces back together. "
                "Then {name} and {helper} waited for the glue to dry.",
                "{h_He} found some tape and fixed the {noun} with care. {name} helped to hold the pieces.",
                "Together, they fixed the {noun} with glue and a little bit of tape.",
            ),
            (
                "Soon the {noun} was as good as new! {name} smiled a big smile.",
                "When it was done, the {noun} looked almost new. {name} jumped for joy.",
            ),
        ),
        lessons=(
            "broken things can often be fixed",
            "you should be gentle with your toys",
            "it is good to be careful with the things you love",
        ),
    ),
    Problem(
        "muddy item", "dirty", "any",
        trouble=(
            (
                "{name} was running with {his} {obj} when {he} slipped. Splash! "
                "The {noun} fell right into a big mud puddle.",
                "The ground was wet from the rain, and {name}'s {obj} fell into the mud.",
                "A playful puppy grabbed {name}'s {obj} and ran into the mud with it.",
            ),
            (
                '"Yuck! My {noun} is all dirty!" said {name}.',
                "{name} picked up the {noun}. It was wet and brown and muddy, and {he} wanted to cry.",
            ),
        ),
        resolution=(
            (
                "{Helper_intro} came over and looked at the {noun}.",
                "{Helper_intro} saw the muddy {noun} and smiled.",
            ),
            (
                '"We can wash it," said {helper}.',
                '"A little mud is not a big problem," said {helper}.',
            ),
            (
                "They took the {noun} home, washed it with warm water and soap, and put it in the sun to dry.",
                "{h_He} filled a bucket with soapy water, and {name} helped to scrub the {noun}. Scrub, scrub, scrub!",
            ),
            (
                "Soon the {noun} was clean and dry, and it even smelled like flowers!",
                "When it was dry, the {noun} was clean again. {name} gave it a big hug.",
            ),
        ),
        lessons=(
            "a little mess can always be cleaned up",
            "there is a way to fix most problems",
            "it is better to fix a problem than to cry about it",
        ),
    ),
    Problem(
        "blown away", "fly", "any",
        trouble=(
            (
                "Suddenly, a big gust of wind came across the {place}. Whoosh! It took {name}'s {obj} up into the sky.",
                "The wind began to blow very hard, and it pulled the {noun} out of {name}'s hands and carried it away.",
            ),
            (
                '"Come back, {noun}!" {name} shouted. {He} ran after it as fast as {he} could.',
                "{name} ran and ran, but the {noun} flew higher and higher.",
            ),
        ),
        resolution=(
            (
                "{Helper_intro} saw the {noun} flying away and ran too.",
                "Just then, {helper_intro} came running to help.",
            ),
            (
                "The {noun} came down on the other side of the path. {Helper} ran over and picked it up.",
                "Then the wind stopped, and the {noun} fell softly into a bush. {Helper} reached in and got it.",
                "{h_He} jumped up high and caught the {noun} just in time!",
            ),
            (
                '{name} laughed. "Thank you, {hcall}! You are so fast!"',
                '"Let\'s hold it tight next time," said {helper}. {name} nodded and held the {noun} close.',
            ),
        ),
        lessons=(
            "you should hold on tight to the things you love",
            "it is good to help each other",
            "it is nice to have someone who runs with you",
        ),
    ),
    Problem(
        "sharing", "small", "friend",
        trouble=(
            (
                "Soon {name} met {helper_intro}. {h_He} wanted to play with the {noun} too.",
                '{Helper_intro} came over. "Can I play with your {noun}?" {h_he} asked.',
            ),
            (
                '"No! It is mine!" said {name}, and {he} held the {noun} close.',
                "{name} did not want to share. {He} hid the {noun} behind {his} back, "
                "and {helper} walked away with a sad face.",
            ),
        ),
        resolution=(
            (
                "{name} played alone, but it was not much fun.",
                "Soon {name} felt bad inside, and playing alone with {his} {noun} was boring.",
            ),
            (
                '{He} walked over to {helper} and said, "I am sorry. Do you want to play with my {noun}?"',
                '"Here, you can have a turn," said {name}, and {he} gave the {noun} to {helper}.',
            ),
            (
                "{Helper} smiled a big smile. They took turns with the {noun} and played together all afternoon.",
                "They played with the {noun} together, and they laughed and laughed.",
            ),
        ),
        lessons=(
            "sharing is caring",
            "playing together is more fun than playing alone",
            "it feels good to share",
        ),
    ),
    Problem(
        "sad friend", "small", "friend",
        trouble=(
            (
                "Under a tree, {name} saw {helper_intro} sitting all alone. {h_He} looked very sad.",
                "Then {name} saw {helper_intro}. {h_He} was crying.",
            ),
            (
                '"What is wrong?" asked {name}. "My ice cream fell on the ground," said {helper}.',
                '"Why are you sad?" asked {name}. "I have no one to play with," said {helper}.',
                '"What happened?" asked {name}. "I fell down and hurt my knee," said {helper}.',
            ),
        ),
        resolution=(
            (
                "{name} wanted to help {h_him} feel better.",
                "{name} thought for a moment. {He} wanted to make {helper} smile.",
            ),
            (
                '"You can play with my {noun}," said {name}, and {he} gave it to {helper}.',
                "{name} did a silly dance with {his} {noun}.",
                "{name} sat next to {helper} and told {h_him} a funny story about {his} {noun}.",
            ),
            (
                "{Helper} started to laugh, and soon {name} was laughing too.",
                'Soon {helper} was smiling again. "Thank you," {h_he} said. "You are a good friend, {name}."',
            ),
        ),
        lessons=(
            "a little kindness can make a sad friend happy",
            "being kind is the best thing you can do",
            "good friends help each other feel better",
        ),
    ),
    Problem(
        "scared at night", "cuddle", "adult",
        trouble=(
            (
                "That night, there was a big storm, and the thunder went boom!",
                "That night, {name}'s room was very dark, and {he} heard a strange noise.",
                'That night, the wind went "whooo" outside the window.',
            ),
            (
                '{name} pulled the covers up to {his} nose. "I am scared!" {he} called.',
                "{name} could not sleep. {He} was scared of the dark.",
            ),
        ),
        resolution=(
            (
                "{Helper_intro} came into the room and sat on the bed.",
                "Soon {helper_intro} came in and turned on a little light.",
            ),
            (
                '"It is just the wind," said {helper}. "You are safe here, {name}."',
                '"The thunder is just a big noise. It can not hurt you," said {helper}.',
                '"I am right here, {name}," said {helper}. "There is nothing to be scared of."',
            ),
            (
                "{h_He} put {his} {obj} in {his} arms. {name} held it close and felt much better.",
                "{name} hugged {his} {noun} tight. With the {noun} next to {him}, {he} felt brave.",
            ),
            (
                "Soon {name} closed {his} eyes and fell fast asleep.",
                "{name} yawned a big yawn, and soon {he} was asleep.",
            ),
        ),
        lessons=(
            "it is okay to feel scared sometimes",
            "the dark is nothing to be afraid of",
            "you can be brave even when you are scared",
        ),
        away=False,
    ),
    Problem(
        "hurt bird", "small", "any",
        trouble=(
            (
                "Near a bush, {name} found a little bird that could not fly, because its wing was hurt.",
                '{name} heard a small "tweet, '
                'tweet." A baby bird with a hurt wing was sitting in the grass by {his} feet.',
            ),
            (
                '"Poor little bird, I want to help you," said {name}.',
                "{name} knelt down and looked at the bird, which was scared and cold.",
            ),
        ),
        resolution=(
            (
                "{name} called {helper}, and {h_he} came right away.",
                "{Helper_intro} came over to see.",
            ),
            (
                '"Let\'s help it together," said {helper}.',
                '"We must be very gentle," said {helper}.',
            ),
            (
                "They made a soft bed for the bird in a little {color} box and gave it water and seeds. "
                "{name} put {his} {noun} next to the box so the bird would not be lonely.",
                "They took the bird home and kept it warm. "
                "{name} sat by the box with {his} {noun} and sang soft songs.",
            ),
            (
                "After {count} days, the wing was better. The bird flapped its wings, flew once around {name}, "
                "and went up into the sky.",
                "One morning, the bird was strong again. It sang a happy song for {name} and flew away.",
            ),
        ),
        lessons=(
            "we should always be kind to animals",
            "helping others makes your heart happy",
            "even small friends need help sometimes",
        ),
        away=False,
    ),
    Problem(
        "rainy day", "small", "any",
        trouble=(
            (
                "{name} wanted to play with {his} {obj}, but dark clouds came and it began to rain.",
                "Just as {name} started to play, big drops of rain began to fall, and {he} had to run home.",
            ),
            (
                '"Now I can not play!" said {name}. {He} looked out the window with a sad face.',
                "{name} sat by the window and watched the rain. {He} was bored and sad.",
            ),
        ),
        resolution=(
            (
                "{Helper_intro} sat down next to {him}.",
                "Then {helper_intro} came over with a big smile.",
            ),
            (
                '"We can have fun inside," said {helper}.',
                '"Rainy days can be fun too," said {helper}. "Let me show you."',
            ),
            (
                "They built a big fort with pillows and blankets. {name} brought {his} {noun} into the fort too.",
                "{name} and {helper} made a little stage and put on a show. The {noun} was the star of the show!",
                "They drew a big picture of the {place}. {name} drew {his} {noun} right in the middle.",
            ),
            (
                "{name} had so much fun that {he} forgot all about the rain.",
                "When the rain stopped, {name} and {helper} saw a big rainbow in the sky.",
            ),
        ),
        lessons=(
            "you can have fun on a rainy day too",
            "there is always something fun to do",
            "a sad day can turn into a happy one",
        ),
        away=False,
    ),
    Problem(
        "race", "small", "friend",
        trouble=(
            (
                "{name} and {helper_intro} had a race to the end of the path.",
                'Soon {helper_intro} came by and said, "Let\'s have a race!" They ran as fast as they could.',
            ),
            (
                "{name} was in front, but then {he} tripped and fell down. {His} knee hurt.",
                '{name} fell over a rock. "Ouch!" {he} cried.',
            ),
        ),
        resolution=(
            (
                '{Helper} stopped running and came back. "Are you okay?" {h_he} asked.',
                "{Helper} saw {name} fall and ran back right away.",
            ),
            (
                "{h_He} helped {name} get up and brushed off {his} knee.",
                "{h_He} helped {name} stand up and held {his} hand.",
            ),
            (
                "{name} and {helper} walked to the end of the path together, step by step.",
                "Slowly, they walked the rest of the way together.",
            ),
            (
                '"You could have won," said {name}. {Helper} smiled and said, '
                '"Being your friend is better than winning."',
                '"We both won," said {helper}, and they laughed together.',
            ),
        ),
        lessons=(
            "friends are more important than winning",
            "a good friend always comes back for you",
        ),
    ),
    Problem(
        "learning to ride", "ride", "any",
        trouble=(
            (
                "{At_place}, {name} wanted to ride {his} {obj}, but {he} did not know how yet.",
                "{name} had just gotten {a_obj}, but riding it was very hard.",
            ),
            (
                '{He} wobbled and fell. Bump! "I can not do it," {he} said.',
                "{name} fell down again and again. {He} wanted to give up.",
            ),
        ),
        resolution=(
            (
                "{Helper_intro} came over and smiled.",
                "Just then, {helper_intro} came to help.",
            ),
            (
                '"Try again, {name}," said {helper}. "I will hold the {noun} for you."',
                '"Everyone falls at first," said {helper}. "Let\'s try one more time."',
            ),
            (
                "{Helper} held the {noun} while {name} rode slowly. Then {h_he} let go, "
                "and {name} was riding all by {himself}!",
                "{name} tried again and again. At last, {he} rode all the way down the path by {himself}!",
            ),
            (
                '"I did it!" {name} shouted. {He} was so proud.',
                '{name} laughed and rode in big circles. "Look at me!" {he} called.',
            ),
        ),
        lessons=(
            "if you keep trying, you can do hard things",
            "practice makes things easier",
            "you should never give up",
        ),
    ),
    Problem(
        "big mess", "small", "adult",
        trouble=(
            (
                "When {name} got home, {he} played with all {his} toys at once. "
                "Soon there were toys all over {his} room!",
                "Back at home, {name} took out all {his} toys and blocks. Soon the floor was covered with them.",
            ),
            (
                '{Helper_intro} came in and said, "Oh my! What a big mess!"',
                "{Helper_intro} came in and almost tripped on a block.",
            ),
        ),
        resolution=(
            (
                '{name} felt bad. "I will clean it up," {he} said.',
                '"I am sorry," said {name}. "I will put everything away."',
            ),
            (
                "{He} put the blocks in the box and the books on the shelf. {Helper} helped too, "
                "and they sang a clean-up song.",
                "{name} picked up one toy at a time. {Helper} helped, and soon it was like a game.",
            ),
            (
                'At the very bottom of the pile, {name} found {his} {obj}. "There you are!" {he} said.',
                "Last of all, {name} put {his} {noun} in its special place.",
            ),
            ('Soon the room was clean, and {helper} said, "Thank you for your help, {name}!"',),
        ),
        lessons=(
            "it is good to clean up after you play",
            "cleaning up can be fun when you do it together",
        ),
        away=False,
    ),
    Problem(
        "telling the truth", "small", "adult",
        trouble=(
            (
                "Back at home, {name} ran in the house. {He} bumped into a table, "
                "and {his} {adult}'s pretty vase fell. Crash!",
                "Later, at home, {name} threw {his} {noun} in the house. It hit {his} {adult}'s favorite cup, "
                "and the cup broke.",
            ),
            (
                "{name} was scared. {He} hid the broken pieces behind the couch.",
                "{name} was afraid {he} would be in trouble, so {he} did not say a word.",
            ),
        ),
        resolution=(
            (
                '"What was that noise?" asked {helper}.',
                "{Helper_intro} came in and looked around.",
            ),
            (
                '{name} knew that hiding was not right. "I did it. I am sorry, {hcall}," {he} said.',
                '{name} took a deep breath and told the truth. "It was me," {he} said. "I am sorry."',
            ),
            (
                '{Helper} gave {name} a big hug. "Thank you for telling me the truth," {h_he} said.',
                '{Helper} smiled. "Accidents happen, {name}. I am proud of you for telling the truth."',
            ),
            (
                "Together, they cleaned up the pieces, "
                "and {name} promised to play with {his} {noun} outside from now on.",
            ),
        ),
        lessons=(
            "it is always best to tell the truth",
            "saying sorry makes things better",
        ),
        away=False,
    ),
    Problem(
        "new friend", "small", "friend",
        trouble=(
            (
                "{name} did not know anyone {at_place}. {He} felt shy and a little lonely.",
                "{name} was new {at_place}. The other kids were playing, but {name} was too shy to say hello.",
            ),
            (
                "{He} sat down all alone and held {his} {obj}.",
                "{He} played with {his} {obj} by {himself}, but it was not much fun.",
            ),
        ),
        resolution=(
            (
                "Then {stranger} came over.",
                "After a while, {stranger} walked up to {him}.",
            ),
            (
                '"I like your {noun}!" said {helper}. "Can we play together?"',
                '"Hi, my name is {helper}," {h_he} said. "What is your name?"',
            ),
            (
                '{name} smiled and said, "Yes, let\'s play!" They played with the {noun} until the sun went down.',
                "{name} told {helper} {his} name, and soon they were playing with the {noun} together.",
            ),
            (
                'When it was time to go home, {helper} said, "See you tomorrow, {name}!"',
                "{name} was not shy anymore, because now {he} had a new friend.",
            ),
        ),
        lessons=(
            "a smile and a hello can make a new friend",
            "it is good to be brave and say hello",
            "new friends can be found everywhere",
        ),
    ),
    Problem(
        "hungry puppy", "small", "any",
        trouble=(
            (
                "{name} and {helper_intro} had a picnic {at_place} with a basket full of good food.",
                "At lunch time, {name} sat down with {helper_intro} to eat a picnic.",
            ),
            (
                "Then {name} saw a little puppy under a bush. It was thin, and it looked very hungry.",
                "Soon a small, hungry puppy came by. It looked at the food with big, sad eyes.",
            ),
        ),
        resolution=(
            (
                '"Can we give it some food?" asked {name}. "Yes, that is very kind," said {helper}.',
                '"The puppy is hungry," said {name}. {Helper} nodded and said, "Let\'s help it."',
            ),
            (
                "{name} gave the puppy half of {his} {treat}. The puppy ate it all up.",
                "{name} broke {his} {treat} in two and gave the puppy a big piece.",
            ),
            (
                "The puppy wagged its tail and licked {name}'s hand.",
                "The puppy barked a happy bark and jumped around.",
            ),
            (
                "Then it played with {name}'s {noun} all afternoon.",
                "It followed {name} everywhere and played with {his} {noun}.",
            ),
        ),
        lessons=(
            "it feels good to share with those who need it",
            "sharing food is a kind thing to do",
        ),
    ),
    Problem(
        "getting lost", "small", "adult",
        trouble=(
            (
                "The {place} was very busy. {name} let go of {his} {adult}'s hand to look at a big balloon. "
                "When {he} turned around, {his} {adult} was gone!",
                "{name} ran off to look at some pretty butterflies. When {he} looked up, "
                "{he} could not see {his} {adult} anywhere.",
            ),
            (
                "{name} was lost. {He} held {his} {obj} tight and tried not to cry.",
                '"{Adult}! Where are you?" {name} called. {He} felt very small and scared.',
            ),
        ),
        resolution=(
            (
                '{He} remembered what {his} {adult} always said: "If you get lost, stay where you are."',
                "{name} stood still by a big tree, just like {he} had been told.",
            ),
            (
                "Soon {helper_intro} came running. {h_He} had been looking everywhere!",
                "Then {name} heard a voice call {his} name. It was {helper}!",
            ),
            (
                '{Helper} gave {name} a big, tight hug. "You did the right thing," {h_he} said.',
                "{h_He} picked {name} up and hugged {him} and {his} {noun} too.",
            ),
        ),
        lessons=(
            "you should always stay close to your family",
            "if you get lost, you should stay where you are",
        ),
    ),
    Problem(
        "ruined card", "small", "friend",
        trouble=(
            (
                "{name} and {helper_intro} wanted to make a card for {name}'s {adult}. "
                "They drew a big sun and a {color} heart on it.",
                "{name} and {helper_intro} made a birthday card for {name}'s {adult}. "
                "It had a big {color} heart on it.",
            ),
            (
                "But then {name} bumped a cup of juice. Oh no! The card for {name}'s {adult} was wet and sticky.",
                "Then a big dog ran by and stepped on the card with its muddy feet!",
            ),
        ),
        resolution=(
            (
                '{name} was sad. "Now we have no card," {he} said.',
                "{name} looked at the card and wanted to cry.",
            ),
            (
                '"We can make a new one," said {helper}. "An even better one!"',
                '"Let\'s try again," said {helper}. "It will be fun."',
            ),
            (
                "This time, they drew {name}'s {obj} on the card too, with lots of flowers.",
                "They made a new card with stickers and drew a picture of the {noun} on it.",
            ),
            (
                "{name}'s {adult} loved the card and put it on the wall.",
                "When {name}'s {adult} saw the card, there was a big smile and a big hug for everyone.",
            ),
        ),
        lessons=(
            "a gift made with love is the best gift",
            "when something goes wrong, you can try again",
        ),
        away=False,
    ),
    Problem(
        "tall slide", "small", "any",
        trouble=(
            (
                "Near the {place}, there was a playground with a very tall slide. {name} wanted to go down it, "
                "but it looked so high.",
                "Some big kids were going down a tall slide near the {place}. {name} wanted to try, "
                "but {he} was scared.",
            ),
            (
                '{name} climbed one step and then stopped. "It is too high," {he} said.',
                "{He} held {his} {obj} tight and looked up at the slide. {His} legs felt wobbly.",
            ),
        ),
        resolution=(
            (
                "{Helper_intro} came and stood next to {him}.",
                "Just then, {helper_intro} came over.",
            ),
            (
                '"I will be right here at the bottom," said {helper}.',
                '"You can do it. Just go one step at a time," said {helper}.',
            ),
            (
                "{name} took a deep breath and climbed up, step by step. Then {he} sat down at the top and let go. "
                "Whee!",
                "{name} climbed up slowly. At the top, {he} counted to three and slid down. Whoosh!",
            ),
            (
                '{name} landed at the bottom with a big laugh. "Again! Again!" {he} shouted.',
                '"That was so much fun!" said {name}. {He} was not scared anymore.',
            ),
        ),
        lessons=(
            "being brave means trying even when you are scared",
            "things can seem scary before you try them",
        ),
    ),
    Problem(
        "slow seed", "small", "any",
        trouble=(
            (
                "Back at home, {name} planted a little seed in a pot by the window. Every day, {he} gave it water.",
                "Back at home, {name} put a tiny seed in the dirt and watered it.",
            ),
            (
                'But day after day, nothing came up. "Why is it not growing?" {he} asked.',
                "After {count} days, there was still nothing but dirt. {name} was sad and wanted to stop.",
            ),
        ),
        resolution=(
            (
                '{Helper_intro} smiled and said, "Seeds need time, so be patient, {name}."',
                '"Wait and see, {name}," said {helper}. "Good things grow slowly."',
            ),
            (
                "So {name} waited and kept giving the seed water and sun.",
                "{name} waited, and every day {he} sang a little song to the seed.",
            ),
            (
                "One morning, {he} saw a tiny green leaf! Soon it grew into a big, bright {flower}.",
                "At last, a little green sprout came up. Soon there was a pretty {color} flower.",
            ),
            ('{name} put {his} {noun} next to the flower and said, "Look how big it is!"',),
        ),
        lessons=(
            "good things take time",
            "it is good to be patient",
        ),
        away=False,
    ),
)


def with_article(phrase: str) -> str:
    """Put "a" or "an" in front of a noun phrase."""
    article = "an" if phrase[0] in "aeiou" else "a"
    return f"{article} {phrase}"


def pick_child(rng: random.Random) -> Character:
    if rng.random() < 0.5:
        return Character(rng.choice(GIRL_NAMES), "girl", SHE)
    return Character(rng.choice(BOY_NAMES), "boy", HE)


def pick_animal(rng: random.Random) -> Character:
    kind = rng.choice(ANIMALS)
    if rng.random() < 0.5:
        return Character(rng.choice(FEMALE_PET_NAMES), kind, SHE)
    return Character(rng.choice(MALE_PET_NAMES), kind, HE)


def pick_friend(rng: random.Random, hero: Character) -> Character:
    """A friend of the same sort as the hero (child or animal) with a different name."""
    pick = pick_child if hero.kind in ("girl", "boy") else pick_animal
    friend = pick(rng)
    while friend.name == hero.name:
        friend = pick(rng)
    return friend


def pick_helper(rng: random.Random, problem: Problem, hero: Character, adult: Character) -> Character:
    """The hero's grown-up or a friend, as the problem asks."""
    if problem.helper == "adult" or (problem.helper == "any" and rng.random() < 0.5):
        return adult
    return pick_friend(rng, hero)


def plan_story(rng: random.Random) -> StoryPlan:
    """Choose who is in the story, where it happens, what goes wrong and who helps."""
    hero = pick_child(rng) if rng.random() < 0.65 else pick_animal(rng)
    adult = rng.choice(ADULTS)
    problem = rng.choice(PROBLEMS)
    item = rng.choice(tuple(item for item in ITEMS if problem.needs in item.tags))
    return StoryPlan(
        hero=hero,
        trait=rng.choice(TRAITS),
        adult=adult,
        helper=pick_helper(rng, problem, hero, adult),
        item=item,
        adjective=rng.choice(item.adjectives),
        place=rng.choice(PLACES),
        problem=problem,
    )


def pronoun_fields(prefix: str, pronouns: Pronouns) -> dict[str, str]:
    """Template fields such as {he}, {His}, {himself}, named after the male forms."""
    return {
        f"{prefix}he": pronouns.subject,
        f"{prefix}He": pronouns.subject.capitalize(),
        f"{prefix}him": pronouns.object,
        f"{prefix}his": pronouns.possessive,
        f"{prefix}His": pronouns.possessive.capitalize(),
        f"{prefix}himself": pronouns.reflexive,
    }


def helper_fields(plan: StoryPlan) -> dict[str, str]:
    """How the story names the helper: "her mom" for the grown-up, "Ben" for a friend."""
    helper, hero_his = plan.helper, plan.hero.pronouns.possessive
    if helper == plan.adult:
        mention = intro = f"{hero_his} {helper.kind}"
    else:
        mention, intro = helper.name, f"{hero_his} friend {helper.name}"
    return {
        "helper": mention,
        "Helper": mention[0].upper() + mention[1:],
        "helper_intro": intro,
        "Helper_intro": intro[0].upper() + intro[1:],
        "hcall": helper.name,
        "stranger": f"{with_article('little ' + helper.kind)} named {helper.name}",  # a friend not met yet
        **pronoun_fields("h_", helper.pronouns),
    }


def story_fields(plan: StoryPlan, rng: random.Random) -> dict[str, str]:
    """Every value a template can ask for, with this telling's choice of small details."""
    obj = f"{plan.adjective} {plan.item.noun}"
    hobby, hobby2 = rng.sample(HOBBIES, 2)
    sight, sight2 = rng.sample(plan.place.sights, 2)
    return {
        "name": plan.hero.name,
        "a_hero": with_article(f"{plan.trait} little {plan.hero.kind}"),
        "adult": plan.adult.kind,
        "Adult": plan.adult.name,
        "obj": obj,
        "a_obj": with_article(obj),
        "noun": plan.item.noun,
        "place": plan.place.name,
        "at_place": f"{plan.place.preposition} the {plan.place.name}",
        "At_place": f"{plan.place.preposition.capitalize()} the {plan.place.name}",
        "sight": sight,
        "sight2": sight2,
        "hobby": hobby,
        "hobby2": hobby2,
        "weather": rng.choice(WEATHERS),
        "time": rng.choice(TIMES),
        "lesson": rng.choice(plan.problem.lessons),
        "color": rng.choice(COLORS),
        "flower": rng.choice(FLOWERS),
        "treat": rng.choice(TREATS),
        "count": rng.choice(COUNTS),
        **pronoun_fields("", plan.hero.pronouns),
        **helper_fields(plan),
    }


def render(plan: StoryPlan, rng: random.Random) -> str:
    """Tell a planned story as one line of text."""
    templates = [rng.choice(part) for part in (OPENINGS, LIKES, ITEM_INTROS, OUTINGS, SIGHTS)]
    templates += [rng.choice(step) for step in plan.problem.trouble + plan.problem.resolution]
    templates.append(rng.choice(ENDINGS + AWAY_ENDINGS if plan.problem.away else ENDINGS))
    if rng.random() < MORAL_CHANCE:
        templates.append(rng.choice(MORALS))
    fields = story_fields(plan, rng)
    return " ".join(template.format_map(fields) for template in templates)


def generate_story(rng: random.Random) -> str:
    return render(plan_story(rng), rng)


def generate_stories(n: int = DEFAULT_NUM_STORIES, seed: int = 0) -> list[str]:
    """n stories, the same ones for the same seed."""
    rng = random.Random(seed)
    return [generate_story(rng) for _ in range(n)]
