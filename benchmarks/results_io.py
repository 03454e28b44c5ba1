"""What every benchmark does with its figures once measured."""

import json
import pathlib


def write_results(results: dict, out: str | None) -> None:
    """Writes ``results`` as sorted, indented JSON to ``out`` (nothing when ``out`` is None)."""
    if not out:
        return
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"wrote {path}")
