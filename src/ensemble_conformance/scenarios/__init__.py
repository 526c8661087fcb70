"""Ensemble programs the suite runs: the core function and its case grid (core, cases,
variants, runner, check, oracles, explain, seeds, sharding) and the lifecycle scenarios
(program, runs, dropout, training, layers, construction, checkpoint, lifecycle), with a
project's own (user). Builds on the golden engine and the backends.

Glossary (one noun per concept; a module's own terms are in its docstring: user.py for a
project's declaration, cost.py for censuses):

  program      a function ``run(p) -> nested dict of arrays``, with the parameter sets it
               runs with and its oracles (``program.Program``): a lifecycle scenario of the
               suite, or a step of a project's ``Ensemble``
  recipe       the ensemble code a program exercises (build, forward, train, ...): a
               project's own (``user.Recipe``) or the suite's, written as a user would
  variant      one way to write the core function (``variants.Variant``): ``ensemble``,
               ``mlp_ensemble``, ...; ``--impl`` replaces it by the code under test
  case         one program or variant with one parameter set, with a stable id. Two records
               today, read alike (``program``, ``p``, ``id``): ``cases.Case`` (the core
               function's 146, whose fields are their golden files' metadata) and
               ``lifecycle.ScenarioCase`` (a scenario's, a project's step's); docs/layout.md
               says what a merge into one record must carry over
  run          one execution of a case, made once per process (``runs.run_once``) and read by
               every check of it (``runs.Run``): a scenario's ``run(p)``, or a core case's
               ``runner.CoreRun`` on the inputs stored in its golden (``runner.core_run``)
  outcome      what a scenario's run gave: values, a raised error, or an API the release
               lacks (``program.Outcome``)
  golden       a case's stored outcome, made on the reference pins (golden/store.py); a core
               golden also holds the case's inputs
  epoch        one set of goldens and the pins and PRNG settings that make it (``pins.Epoch``)
  numerics     the backend and matmul precision a run is judged as (``tolerances.Numerics``)
  allowance    the largest |now - golden| the tolerance table allows an element: ``k·u·M``
               per element for a core output, one scale per array for a scenario key
  report       one array's comparison: counts, largest errors, worst elements
               (``compare.ArrayReport``)
  verdict      what the judge says of a run against its golden (``program.Verdict``): a
               change of outcome, the reports, notes on what was not compared. One judge
               gives it for every case (``program.judge_outcomes``), with the case's own
               comparison per key (a scenario's tolerance class, a core case's allowance)
  oracle       a golden-free check of a case: holds on any release, needs no golden. Its
               answer is an ``program.OracleResult`` (holds, fails, not applicable) for
               every case; a program's oracle raises AssertionError or NotApplicable
               (``program.check_oracles``), the core's return their results (oracles.py)
  expectation  what a lifecycle scenario does on the reference pins in one transform mode
               (``lifecycle.Expectation``)
  era          what a scenario does from one flax release on, relative to the reference
               goldens, and why (``compat.Era``)
  cause        why a golden failed: prng-config, float-rounding, semantics-broken, ...
               (``explain.Cause``), found by rerunning under the golden's settings
  census       a compiled program's cost: flops, bytes, HLO op counts (``cost.Census``)
"""
