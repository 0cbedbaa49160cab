"""sslam.fingerprints.codeindex: units, their digests on the normalised syntax tree, and the data their code reads."""
from __future__ import annotations

from sslam.fingerprints.codeindex import DIGEST_RULES, MODULE_UNIT, ModuleIndex, PackageIndex, Rules

SOURCE = '''"""A module docstring."""
import math
from sslam.runtime.errors import ConfigError

FACTOR = 2.0
LIMIT = FACTOR * 3
log_line = print("imported")          # acts when imported


def scaled(value, factor=FACTOR):
    """Docstring."""
    return value * factor  # a comment


def unused():
    return LIMIT


class Settings:
    """Settings."""

    size: int = 4
    name = "x"

    def grow(self):
        return self.size * math.pi

    @property
    def doubled(self):
        return 2 * self.size
'''


def index_of(source: str, name: str = "sslam.fake") -> ModuleIndex:
    return ModuleIndex.parse(name, source)


def test_units_of_a_module():
    index = index_of(SOURCE)
    assert {"scaled", "unused", "Settings", "Settings.grow", "Settings.doubled", "=FACTOR", "=LIMIT",
            "=scaled", MODULE_UNIT} <= set(index.digests)
    assert index.unit_at(10, "scaled") == "scaled"            # a code object's first line -> its unit
    assert index.unit_at(25, "grow") == "Settings.grow"
    assert index.unit_at(28, "doubled") == "Settings.doubled"  # the decorator line starts the method
    assert index.unit_at(7, "<module>") == MODULE_UNIT


def test_comments_docstrings_and_formatting_do_not_count():
    before = index_of(SOURCE).digests
    reformatted = (SOURCE.replace('    """Docstring."""\n', "")
                   .replace("# a comment", "# another comment")
                   .replace("return value * factor", "return (value\n            * factor)")
                   .replace('"""A module docstring."""', '"""Changed."""')
                   .replace("class Settings:\n", "\n\nclass Settings:\n"))
    assert index_of(reformatted).digests == before


def test_every_behavioural_edit_changes_its_unit_only():
    before = index_of(SOURCE).digests
    edits = {
        "scaled": SOURCE.replace("return value * factor", "return value * factor + 1"),   # body
        "=FACTOR": SOURCE.replace("FACTOR = 2.0", "FACTOR = 2.5"),                        # module constant
        "Settings": SOURCE.replace("size: int = 4", "size: int = 5"),                   # dataclass default
        "Settings.grow": SOURCE.replace("self.size * math.pi", "self.size * math.e"),
    }
    for unit, edited in edits.items():
        after = index_of(edited).digests
        changed = {name for name in before if before[name] != after.get(name)}
        assert unit in changed, unit
        assert changed <= {unit, "=" + unit.split(".")[0]}, (unit, changed)
    default = index_of(SOURCE.replace("def scaled(value, factor=FACTOR)", "def scaled(value, factor=LIMIT)")).digests
    assert default["scaled"] != before["scaled"]                                        # a default argument
    methods = index_of(SOURCE.replace("    @property\n    def doubled", "    def doubled")).digests
    assert methods["Settings"] != before["Settings"]                                    # decorators of methods


def test_side_effects_at_import_are_the_module_unit():
    before = index_of(SOURCE).digests[MODULE_UNIT]
    assert index_of(SOURCE.replace('print("imported")', 'print("loaded")')).digests[MODULE_UNIT] != before
    assert index_of(SOURCE.replace("FACTOR = 2.0", "FACTOR = 3.0")).digests[MODULE_UNIT] == before


def test_dependencies_follow_the_data_an_executed_function_reads():
    index = PackageIndex({"sslam.fake": SOURCE})
    closed = index.dependencies({"sslam.fake:scaled"})
    assert {"sslam.fake:scaled", "sslam.fake:=FACTOR"} <= closed
    assert "sslam.fake:=LIMIT" not in closed and "sslam.fake:unused" not in closed
    method = index.dependencies({"sslam.fake:Settings.grow"})
    assert "sslam.fake:Settings" in method and "sslam.fake:=math" in method   # its class comes along


def test_names_are_followed_through_imports_into_the_package():
    index = PackageIndex()
    closed = index.dependencies({"sslam.objective.source_retention:source_retention_terms"})
    # LossTerm is imported from losses.py: its class (fields) is a dependency, its module's functions are not.
    assert "sslam.objective.losses:LossTerm" in closed
    assert "sslam.objective.losses:term_weights" not in closed


def test_static_fingerprint_covers_what_a_module_imports():
    index = PackageIndex()
    modules = index.modules_imported_by("sslam.tables.aggregate")
    assert "sslam.tables.layouts" in modules and "sslam.runtime.configuration" in modules
    assert not any(name.startswith(("sslam.model", "sslam.objective", "sslam.train")) for name in modules)
    assert index.static_fingerprint("sslam.tables.aggregate") == PackageIndex().static_fingerprint("sslam.tables.aggregate")


def test_the_digest_rules_are_pinned():
    """Records hold digests: if this fails, the digest rules changed. Keep the old rules computable (records made
    under them are compared under them), add the new ones as DIGEST_RULES + 1, and update these pins."""
    pinned = {"scaled": "a08aff5a287fbcf9", "Settings": "f14dda668e89e74d", "=FACTOR": "f3d9f0f37a1a96f1",
              MODULE_UNIT: "f5f997cd9cce1e6d"}
    for version in (1, DIGEST_RULES):
        digests = ModuleIndex.parse("sslam.fake", SOURCE, Rules(version)).digests
        assert {unit: digests[unit] for unit in pinned} == pinned, version


def test_rules_2_make_package_imports_references():
    rules_1 = ModuleIndex.parse("sslam.fake", SOURCE, Rules(1))
    rules_2 = ModuleIndex.parse("sslam.fake", SOURCE, Rules(2))
    assert "=ConfigError" in rules_1.digests and "=ConfigError" not in rules_2.digests   # a reference, not content
    assert rules_2.imports["ConfigError"] == ("sslam.runtime.errors", "ConfigError")
    inside = SOURCE.replace("def unused():\n    return LIMIT", "def unused():\n    from sslam.runtime.errors import "
                            "ConfigError\n\n    return LIMIT")
    moved = inside.replace("sslam.runtime.errors", "sslam.runtime.problems")
    assert ModuleIndex.parse("sslam.fake", inside).digests["unused"] == \
        ModuleIndex.parse("sslam.fake", moved).digests["unused"] == rules_2.digests["unused"]
    assert "@sslam.runtime.errors:ConfigError" in ModuleIndex.parse("sslam.fake", inside).reads["unused"]
    helped = SOURCE.replace("return value * factor", 'parser.add_argument("--f", help="a factor")\n    return value * factor')
    rehelped = helped.replace('help="a factor"', 'help="the factor, explained better"')
    assert ModuleIndex.parse("sslam.fake", helped).digests["scaled"] == ModuleIndex.parse("sslam.fake", rehelped).digests["scaled"]
    assert Rules(1) != Rules(2) and DIGEST_RULES == 2
