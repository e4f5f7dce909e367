"""Write the synthetic restaurant-review set the SDE experiments use (deterministic: same files
every run).

    python SDE/make_reviews.py                     # -> SDE/data/d1_train.jsonl, d1_test.jsonl, d2_test.jsonl
    python SDE/make_reviews.py --out_dir /tmp/sde  # elsewhere

d1 (食物 饮品 价格 卫生 服务 停车) is trained on and tested in-domain; d2 (交通 排队 上菜速度
装修 噪音) is only tested: out-of-domain aspects. The record schema is in SDE/reviews.py.
"""

import argparse
from pathlib import Path

from llm_tuning.atomic import write_jsonl
from llm_tuning.cli import ArgumentParser
from reviews import DEFAULT_SPLITS, generate_split

DATA_DIR = Path(__file__).resolve().parent / "data"


def write_splits(out_dir: Path) -> list[Path]:
    return [write_jsonl(generate_split(split), out_dir / f"{split.name}.jsonl") for split in DEFAULT_SPLITS]


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    for path in write_splits(args.out_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
