"""The reference conformance suite, packaged: the core function's case grid against its
goldens and oracles, what a seed selects, the lifecycle scenarios, and (with --sharded)
the sharded ensembles. Run it with ``ensemble-conformance suite`` or
``pytest --pyargs ensemble_conformance.suite``; its goldens are the reference ones shipped
in the package. This repository's ``conformance/`` re-exports these modules."""
