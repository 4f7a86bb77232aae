"""Train the tiny LLM's byte-level BPE tokenizer on a fixed built-in corpus (deterministic, offline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3, Llama's order for unk/bos/eos

# The synthetic data generator's caption vocabulary; each word must come out as one token with a
# leading space so that label embeddings (REFERENCE 2.6) are single rows of the embedding table.
COLOURS = (
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "cyan",
    "pink",
    "brown",
    "gray",
)
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "bar")
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
SINGLE_TOKEN_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys([*COLOURS, *SHAPES, *(w for p in POSITIONS for w in p.split()), "yes", "no", "Yes", "No"])
)

_GENERIC_TEXT = """\
A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the human's questions.
USER: What is shown in this image? ASSISTANT: The image shows a few simple shapes on a plain background.
Describe the image concisely. Provide a brief description of the given image.
Answer the question using a single word or phrase. Answer with the option's letter from the given choices directly.
Is there a circle in the image? Please answer yes or no. Yes, there is. No, there is not.
What colour is the square? What color is the star? Where is the triangle? How many objects are there?
There are two objects in the picture. There is one object near the center of the photo.
The quick brown fox jumps over the lazy dog. A small child is playing with a ball in the park.
Two people are walking along the beach at sunset while the waves roll in from the sea.
The kitchen has a wooden table, four chairs and a large window that looks out onto the garden.
She opened the door, picked up her bag and walked to the station to catch the early train.
In the morning the sky was clear, but by the afternoon heavy clouds had covered the hills.
The cat is sleeping on the sofa next to a pile of books and an old blanket.
He wrote a short letter to his friend and asked about the weather in the city.
Many students study science, history, language and mathematics at the local school.
The market sells fresh fruit, vegetables, bread, cheese, fish and flowers every weekend.
A man is riding a bicycle down a busy street lined with shops and tall buildings.
We will meet again next week to talk about the plan and decide what to do first.
The dog ran across the field, jumped over a fence and came back with a stick.
This picture was taken at night, so the colours look darker than they would in daylight.
Above the door there is a sign, and below the sign there is a small lamp.
The car is parked between a tree and a house, on the right side of the road.
Please look at the object on the left and tell me what it is made of.
Each room in the hotel has a bed, a desk, a chair and a view of the mountains.
The group of friends sat around the fire, telling stories and laughing until late.
It is important to drink water, eat well and get enough sleep every day.
The train was late because of the snow, so we waited for almost an hour.
Her favourite animals are horses, birds and elephants, and she likes to draw them.
The teacher asked the class to write the numbers from one to ten in order.
First, cut the paper into small pieces; then, glue them onto the card.
Some of the boxes are empty, but most of them are full of toys and clothes.
The river flows through the valley and into the lake near the small village.
Could you tell me where the nearest bank is? It is just around the corner.
The answer is not correct. Try again and think about the question carefully.
A plate with a sandwich, an apple and a cup of coffee is on the table.
The photo shows a group of people standing in front of an old stone church.
Nothing in the scene moves except for the leaves, which shake in the wind.
Because it was raining, the children stayed inside and played games all day.
The number of visitors has grown every year since the museum first opened.
They built a new bridge across the river, which made the journey much shorter.
If you look closely, you can see a bird sitting on the highest branch of the tree.
I think that this is a good idea, although it may take some time to finish.
The image contains several shapes of different sizes, colours and positions.
Is the object on the top or on the bottom? Which shape is closest to the corner?
Count the shapes, name their colours and say where each one is located.
"""


def _caption_sentences() -> list[str]:
    """Templated sentences over every colour, shape and position (fixed order, no randomness)."""
    lines: list[str] = []
    for ci, colour in enumerate(COLOURS):
        for si, shape in enumerate(SHAPES):
            for pi, position in enumerate(POSITIONS):
                other = COLOURS[(ci + si + 1) % len(COLOURS)]
                other_shape = SHAPES[(si + pi + 1) % len(SHAPES)]
                other_pos = POSITIONS[(pi + ci + 1) % len(POSITIONS)]
                lines.append(
                    f"a {colour} {shape} at the {position} and a {other} {other_shape} in the {other_pos}."
                )
                lines.append(f"Is there a {colour} {shape} in the image? {'yes' if pi % 2 else 'no'}")
                lines.append(f"Is there a {colour} {shape} at the {position}? {'Yes' if si % 2 else 'No'}")
    return lines


def _number_sentences() -> list[str]:
    lines = [" ".join(str(i) for i in range(10))]
    lines += [f"There are {n} objects and {n + 1} shapes in {2 * n} images." for n in range(0, 101)]
    words = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
    ]
    lines += [f"the number {w} is written as {i}" for i, w in enumerate(words)]
    return lines


def tokenizer_corpus() -> list[str]:
    """The full training corpus, in a fixed order."""
    generic = [line for line in _GENERIC_TEXT.splitlines() if line.strip()]
    return _caption_sentences() + _number_sentences() + generic * 3


def train_tiny_tokenizer(vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `tokenizer_corpus()`, wrapped for transformers (adds `<s>`, pads right)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    # No prefix space: a word at the start of a text has no leading space, exactly like mid-text
    # words do only after a space (so " red" and "red" are different tokens, as in Llama/GPT-2).
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tokenizer_corpus(), trainer)
    if backend.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"tiny tokenizer: trained vocab has {backend.get_vocab_size()} tokens, expected {vocab_size}; "
            "the built-in corpus is too small for this vocab_size (lower it or extend the corpus)"
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        add_eos_token=False,
        padding_side="right",
        model_max_length=model_max_length,
    )
    missing = [w for w in SINGLE_TOKEN_WORDS if len(tokenizer.tokenize(" " + w)) != 1]
    if missing:
        raise RuntimeError(
            f"tiny tokenizer: these words are not single tokens with a leading space: {missing}"
        )
    return tokenizer
