"""The generated documentation: every config key described, and no generated page or table
stale (``python -m slams.docgen`` rewrites them)."""

import copy

import yaml

from slams import docgen


def test_every_config_key_has_a_description():
    schema = docgen.load_reference_schema()
    assert docgen.missing_descriptions(schema) == []
    keys = [key for key, _ in docgen.schema_keys(schema)]
    assert "assimilation.windows_per_call" in keys and "assimilation.sampler.steps" in keys


def test_a_key_without_description_is_found():
    schema = copy.deepcopy(yaml.safe_load(docgen.SCHEMA.read_text()))
    del schema["properties"]["assimilation"]["properties"]["members"]["description"]
    assert docgen.missing_descriptions(schema) == ["assimilation.members"]


def test_the_reference_follows_the_schema():
    schema = docgen.load_reference_schema()
    page = docgen.configuration_reference(schema)
    assert "| `assimilation.members` | integer | `8` | ensemble size |" in page
    schema["properties"]["assimilation"]["properties"]["members"]["description"] = "changed"
    assert "| `assimilation.members` | integer | `8` | changed |" in (
        docgen.configuration_reference(schema)
    )


def test_generated_docs_are_current():
    stale = docgen.stale(write=False)
    assert stale == [], f"run `python -m slams.docgen`: stale {stale}"
