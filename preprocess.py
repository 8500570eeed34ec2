#!/usr/bin/env python
"""Tokenize a QA source into cached Arrow shards (features + examples); print a JSON summary.

    python preprocess.py --data PATH_OR_HUB_NAME [--split NAME] --model NAME_OR_PATH --cache_dir DIR
        [--max_length N] [--doc_stride N] [--num_proc N] [--language NAME|all] [--overwrite_cache]

The last line printed is the JSON summary (``cache_dir`` opens with ``datasets.load_from_disk``).
"""
from __future__ import annotations

import argparse
import json
import sys

from qa_core.pipeline import PreprocessConfig, prepare
from qa_core.readers import DataSourceError


def parse_args(argv: list[str] | None = None) -> PreprocessConfig:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True,
                        help="TyDi (raw, HF or PrimeQA schema)/SQuAD .jsonl(.gz) or .json(.gz), "
                             "a datasets.save_to_disk folder, or a hub name")
    parser.add_argument("--split", default="train",
                        help="split of a hub dataset or saved DatasetDict")
    parser.add_argument("--hub_config", default=None,
                        help="hub dataset config (TyDi: primary_task)")
    parser.add_argument("--model", required=True,
                        help="model name or folder whose (fast) tokenizer to use")
    parser.add_argument("--cache_dir", required=True, help="root folder of the preprocessing cache")
    parser.add_argument("--max_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--num_proc", type=int, default=1,
                        help="worker processes, >= 1 (does not change the cache key)")
    parser.add_argument("--language", default="english", help="TyDi language to keep, or 'all'")
    parser.add_argument("--batch_size", type=int, default=64, help="examples per worker task")
    parser.add_argument("--rows_per_shard", type=int, default=20_000,
                        help="features per Arrow shard")
    parser.add_argument("--overwrite_cache", action="store_true",
                        help="rebuild even when the cache has this key")
    args = parser.parse_args(argv)
    return PreprocessConfig(**vars(args))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        result = prepare(config)
    except (DataSourceError, ValueError) as err:
        print(f"preprocess.py: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
