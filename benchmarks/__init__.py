"""The benchmark suites (outside the library): `clipforge bench <suite>` runs them from a clone."""
