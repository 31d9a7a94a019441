"""Validator for tests/schema.rs: checks the schema itself against its metaschema, then
validates each JSON document named on the command line against it.

Usage: schema_validate.py SCHEMA DOC...; prints one JSON line per document,
{"file": DOC, "errors": ["path: message", ...]} (an empty list when it is valid).
"""

import json
import sys

import jsonschema


def main():
    with open(sys.argv[1]) as f:
        schema = json.load(f)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    for name in sys.argv[2:]:
        with open(name) as f:
            doc = json.load(f)
        errors = [
            "/".join(str(p) for p in e.absolute_path) + ": " + e.message
            for e in validator.iter_errors(doc)
        ]
        print(json.dumps({"file": name, "errors": errors}))


if __name__ == "__main__":
    main()
