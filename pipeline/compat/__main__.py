"""docs/compat.md from the seam's contracts: ``python -m pipeline.compat > docs/compat.md``."""

from pipeline.compat import contract

HEADER = """# Library internals we rely on

Every third-party private name, subclass hook and patch Voice Lab uses lives in
`pipeline/compat/` (one module per library), and nowhere else:
`tests/test_compat_seam.py` walks the AST of pipeline/, ui/, deploy/, bench/ and app.py
and fails, naming file and line, on a private name of a library used outside the seam.

`tests/test_compat_contract.py` checks each row below against the installed versions (the
owner imports, a method takes the parameters the seam passes, an attribute is still set in
the class's source). After moving a pin in `requirements.txt`, run it first:

    python -m pytest tests/test_compat_contract.py

It reads the contracts from the seam's source and imports only the libraries, so it also
runs in a throwaway virtualenv holding just the candidate versions and pytest.

This page is generated from the modules' `CONTRACT` lists:
`python -m pipeline.compat > docs/compat.md`.

| Name | Library | Why we rely on it | What would retire it |
|---|---|---|---|
"""


def markdown() -> str:
    rows = [
        f"| `{e.qualified}` | {e.library} | {e.why} | {e.retire} |".replace("\n", " ")
        for e in contract()
    ]
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
