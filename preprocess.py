#!/usr/bin/env python
"""Tokenize a QA source into cached Arrow shards (features + examples); print a JSON summary.

    python preprocess.py --data PATH_OR_HUB_NAME [--split NAME] --model NAME_OR_PATH --cache_dir DIR
        [--max_length N] [--doc_stride N] [--label_answer first|consensus] [--num_proc N]
        [--language NAME|all] [--overwrite_cache]

The last line printed is the JSON summary (``cache_dir`` opens with ``datasets.load_from_disk``).
Flags are the dataclasses ``SourceArgs``, ``CacheArgs`` and ``FeatureArgs`` of
``qa_core/settings.py``, shared with ``train_accelerate.py``.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

from qa_core.errors import QAError, exit_interrupted, exit_with_error
from qa_core.pipeline import PreprocessConfig, prepare
from qa_core.settings import parse_preprocess_settings


def main(argv: list[str] | None = None) -> int:
    try:
        # the three flag groups hold exactly PreprocessConfig's fields
        groups = parse_preprocess_settings(argv, __doc__)
        result = prepare(PreprocessConfig(**{k: v for group in groups
                                             for k, v in asdict(group).items()}))
    except QAError as err:
        return exit_with_error("preprocess.py", err)
    except KeyboardInterrupt:  # entries are written to a temporary folder, renamed when whole
        return exit_interrupted("preprocess.py", "an unfinished cache entry is never used")
    print(json.dumps(result.summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
