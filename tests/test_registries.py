"""One home per concept: the method registry is the one list of methods, parts and their builders."""

from __future__ import annotations


def test_the_method_registry_is_the_one_list_of_methods():
    # MethodConfig.name's allowed values, the derived lists and the objective builders agree with it.
    import typing

    from core.config import METHOD_PARTS, METHODS, METHODS_WITH_BASIC, METHODS_WITH_SEA, PARTS, MethodConfig
    from core.methods.build import PART_BUILDERS

    assert typing.get_args(MethodConfig.model_fields["name"].annotation) == METHODS == tuple(METHOD_PARTS)
    assert METHODS_WITH_SEA == ("sea", "sea+basic") and METHODS_WITH_BASIC == ("basic", "sea+basic")
    assert set(PART_BUILDERS) == set(PARTS) == {p for parts in METHOD_PARTS.values() for p in parts}
