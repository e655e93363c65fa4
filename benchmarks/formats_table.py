"""Bits per weight vs perplexity of tiny_lm for every number format and integer RTN setting.

Every ``nn.Linear`` of ``load_pretrained("tiny_lm")`` (28 of them: 688,256 of its 869,248
parameters; embedding and norms stay float32) is stored either in a number format
(``quantize_weights(lm, format=...)``) or as minquant's own integer round-to-nearest codes
(``quantize_weights(lm, bits=, group_size=)``, asymmetric, float16 scales, uint8 zero points).
Bits per weight are measured from the stored bytes (codes, scales, zero points, padding)
over the linear layers; perplexity is on the first 16,385 tokens of the validation play
(16,384 predictions, windows of 128). A row is on the Pareto front when no other row has
both fewer bits per weight and a lower perplexity.

Usage: ``python benchmarks/formats_table.py [--tokens 16385] [--markdown]``.

NOTE: OpenBLAS is limited to one thread unless OPENBLAS_NUM_THREADS is already set, so that
the float sums (and the printed figures) are the same run to run.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import time

import minquant as mq
from minquant.llm.formats import model_nbytes

#: Number formats, roughly from most to fewest bits.
FORMATS = (
    "fp8_e4m3", "fp8_e5m2", "q8_0", "mxint8", "mxfp8_e4m3", "mxfp8_e5m2", "q5_1", "q5_0",
    "q4_1", "q4_0", "nf4", "nf4_dq", "mxfp4", "tq2_0", "ternary", "tq1_0", "binary",
)  # fmt: skip
#: Integer RTN settings (bits, group size; None = one group per output row).
RTN = ((8, None), (8, 128), (4, 128), (4, 64), (4, 32), (3, 128), (3, 64), (3, 32),
       (2, 128), (2, 64), (2, 32))  # fmt: skip


def pareto(rows: list[dict]) -> None:
    """Mark each row that no other row beats on both bits per weight and perplexity."""
    for row in rows:
        row["front"] = not any(
            o["bpw"] <= row["bpw"] and o["ppl"] <= row["ppl"] and o is not row
            and (o["bpw"] < row["bpw"] or o["ppl"] < row["ppl"])
            for o in rows
        )  # fmt: skip


def measure(tokens_n: int) -> tuple[float, list[dict]]:
    """(float perplexity, one row per setting: name, kind, bpw, ppl, CPU seconds)."""
    lm = mq.models.load_pretrained("tiny_lm")
    tokens = mq.data.encode(mq.data.load_text("val"))[:tokens_n]
    float_ppl = mq.llm.perplexity(lm, tokens)
    settings = [("format", fmt, {"format": fmt}) for fmt in FORMATS]
    for bits, group in RTN:
        label = f"int{bits} RTN " + ("per row" if group is None else f"g{group}")
        settings.append(("rtn", label, {"bits": bits, "group_size": group}))
    rows = []
    for kind, name, kwargs in settings:
        start = time.process_time()
        qlm = mq.llm.quantize_weights(lm, **kwargs)
        n_bytes, n_weights = model_nbytes(qlm)
        ppl = mq.llm.perplexity(qlm, tokens)
        seconds = time.process_time() - start
        rows.append(dict(name=name, kind=kind, bpw=8 * n_bytes / n_weights, ppl=ppl, s=seconds))
    pareto(rows)
    return float_ppl, sorted(rows, key=lambda r: (-r["bpw"], r["ppl"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=16385)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    start = time.process_time()
    float_ppl, rows = measure(args.tokens)
    print(f"tiny_lm float32: perplexity {float_ppl:.3f} on {args.tokens:,} tokens")
    if args.markdown:
        print("\n| weights | kind | bits/weight | perplexity | vs float | Pareto |")
        print("|---|---|---:|---:|---:|:---:|")
    for r in rows:
        ratio = r["ppl"] / float_ppl
        front = "yes" if r["front"] else ""
        if args.markdown:
            print(f"| {r['name']} | {r['kind']} | {r['bpw']:.4f} | {r['ppl']:.3f} | "
                  f"{ratio:.3f} | {front} |")  # fmt: skip
        else:
            print(f"{r['name']:<18} {r['kind']:<7} {r['bpw']:7.4f} bits {r['ppl']:8.3f} "
                  f"x{ratio:6.3f} {front:>4} ({r['s']:.1f} s)")  # fmt: skip
    print(f"\nCPU time: {time.process_time() - start:.0f} s")


if __name__ == "__main__":
    main()
