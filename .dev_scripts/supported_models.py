"""Write docs/en/user_guides/supported_models.md from the head-family table.

Usage:
    python .dev_scripts/supported_models.py [--check]

``--check`` writes nothing and exits 1 when the page in the repository
differs from what mmdist/distillers/families.py renders (the test
tests/test_families.py does the same).
"""
import argparse
import sys
from pathlib import Path

import mmdist  # noqa: F401
from mmdist.analysis.supported import render

PAGE = (
    Path(__file__).resolve().parents[1] / 'docs' / 'en' / 'user_guides' /
    'supported_models.md')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--check',
        action='store_true',
        help='only check that the page is current')
    args = parser.parse_args()
    page = render()
    if args.check:
        current = PAGE.read_text() if PAGE.exists() else ''
        if current != page:
            print(f'{PAGE} is out of date: run {sys.argv[0]}')
            sys.exit(1)
        print(f'{PAGE} is current')
        return
    PAGE.write_text(page)
    print(f'wrote {PAGE}')


if __name__ == '__main__':
    main()
