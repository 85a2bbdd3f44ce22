"""Write a small, randomly initialised GPT-2 checkpoint in Hugging Face format, for demos and tests.

The weights are untrained, so the text is gibberish, but every file is the real
format: transformers writes config.json, generation_config.json, the safetensors
weights and the tokenizer, and genkit loads them like any GPT-2 from the hub::

    python examples/make_gpt2_checkpoint.py /tmp/tiny-gpt2 --tokenizer-dir path/to/gpt2-tokenizer
    genkit generate "ROMEO:" --model /tmp/tiny-gpt2 --stream

The tokenizer folder needs GPT-2's vocab.json and merges.txt, or a tokenizer.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The GPT-2 tokenizer in the development data folder beside a checkout of this repository.
DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoint into (created if missing)")
    parser.add_argument(
        "--tokenizer-dir",
        type=Path,
        default=DEFAULT_TOKENIZER_DIR,
        help="folder with GPT-2's vocab.json and merges.txt, or a tokenizer.json (default: %(default)s)",
    )

    parser.add_argument("--layers", type=int, default=4, help="transformer blocks, n_layer (default: %(default)s)")
    parser.add_argument("--embd", type=int, default=128, help="hidden size, n_embd (default: %(default)s)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads, n_head (default: %(default)s)")
    parser.add_argument(
        "--positions", type=int, default=256, help="context window in tokens, n_positions (default: %(default)s)"
    )
    parser.add_argument(
        "--activation", default="gelu_new", help="activation_function, as transformers names it (default: %(default)s)"
    )

    parser.add_argument(
        "--init-std",
        type=float,
        default=0.3,
        help="standard deviation of the random weights, initializer_range (default: %(default)s; "
        "with transformers' 0.02 greedy decoding repeats one token)",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the weights (default: %(default)s)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="dtype of the stored weights (default: %(default)s)",
    )

    parser.add_argument(
        "--max-shard-size",
        default=None,
        help="split the weights into shards of at most this size, e.g. 500KB, with model.safetensors.index.json",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.embd % args.heads:
        print(f"error: --embd {args.embd} is not divisible by --heads {args.heads}", file=sys.stderr)
        return 2
    tokenizer_files = [args.tokenizer_dir / "tokenizer.json", args.tokenizer_dir / "vocab.json"]
    if not any(path.is_file() for path in tokenizer_files):
        print(
            f"error: no tokenizer.json or vocab.json in {args.tokenizer_dir}; pass --tokenizer-dir with the "
            "GPT-2 tokenizer files (vocab.json and merges.txt)",
            file=sys.stderr,
        )
        return 2

    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    # transformers 5 has one GPT-2 tokenizer class, backed by the tokenizers library;
    # 4.x calls that one GPT2TokenizerFast.
    tokenizer_class = getattr(transformers, "GPT2TokenizerFast", None) or transformers.GPT2Tokenizer
    tokenizer = tokenizer_class.from_pretrained(str(args.tokenizer_dir))

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=args.positions,
        n_embd=args.embd,
        n_layer=args.layers,
        n_head=args.heads,
        activation_function=args.activation,
        initializer_range=args.init_std,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(config).to(getattr(torch, args.dtype)).eval()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    save_options = {"max_shard_size": args.max_shard_size} if args.max_shard_size else {}
    model.save_pretrained(str(args.out_dir), **save_options)
    tokenizer.save_pretrained(str(args.out_dir))

    parameters = sum(p.numel() for p in model.parameters())
    print(f"wrote a random-init GPT-2 ({parameters / 1e6:.1f}M parameters, {args.dtype}) to {args.out_dir}")
    print(f'try: genkit generate "ROMEO:" --model {args.out_dir} --stream')
    return 0


if __name__ == "__main__":
    sys.exit(main())
