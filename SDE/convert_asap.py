"""Convert real ASAP-style review data (CSV) into the jsonl schema run_sde.py reads.

    python SDE/convert_asap.py --csv asap_train.csv --domain d1 --out SDE/data/asap_d1_train.jsonl \
        --columns \
        food=Food#Taste,drinks=Food#Drinks,price=Price#Level,hygiene=Ambience#Sanitary,staff=Service#Hospitality,parking=Service#Parking
    python SDE/run_sde.py --train_file SDE/data/asap_d1_train.jsonl --id_test_file ... --ood_test_file ...

The CSV has a review column (--review_column) and one column per aspect of the domain holding
1 / 0 / -1 / -2 (positive / neutral / negative / not mentioned). A bad cell stops with file:line.
"""

import argparse

from llm_tuning.atomic import write_jsonl
from llm_tuning.cli import ArgumentParser, UserError, exits_on_user_error
from reviews import DOMAINS, load_asap_csv


def parse_columns(spec: str) -> dict[str, str]:
    """`food=Food#Taste,drinks=Food#Drinks` -> {"food": "Food#Taste", "drinks": "Food#Drinks"}."""
    columns = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        aspect, sep, column = item.partition("=")
        if not sep or not aspect.strip() or not column.strip():
            raise UserError(f"--columns: expected aspect=CSV column, got {item!r}")
        columns[aspect.strip()] = column.strip()
    return columns


@exits_on_user_error
def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    parser.add_argument("--columns", required=True, help="aspect=column pairs, comma-separated")
    parser.add_argument("--review_column", default="review")
    parser.add_argument("--out", required=True, help="the .jsonl to write")
    args = parser.parse_args(argv)
    records = load_asap_csv(args.csv, args.domain, parse_columns(args.columns), args.review_column)
    write_jsonl(records, args.out)
    print(f"wrote {len(records)} reviews of domain {args.domain} to {args.out}")


if __name__ == "__main__":
    main()
