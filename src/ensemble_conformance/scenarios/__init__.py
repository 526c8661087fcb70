"""Ensemble programs the suite runs: the scenario model (program, runs), the core function
and its case grid as programs of it (core, cases, variants, runner, check, core_programs,
oracles, explain, seeds, sharding), the lifecycle scenarios (dropout, training, layers,
construction, checkpoint, lifecycle) and a project's own (user). Builds on the golden engine
and the backends.

Glossary (one noun per concept; a module's own terms are in its docstring: user.py for a
project's declaration, cost.py for censuses):

  program      a function ``run(p) -> nested dict of arrays``, with the parameter sets it
               runs with, its oracles and how its golden is judged (``program.Program``):
               a lifecycle scenario of the suite, a step of a project's ``Ensemble``, or a
               variant of the core function (``core_programs.program``)
  recipe       the ensemble code a program exercises (build, forward, train, ...): a
               project's own (``user.Recipe``) or the suite's, written as a user would
  variant      one way to write the core function (``variants.Variant``): ``ensemble``,
               ``mlp_ensemble``, ...; ``--impl`` replaces it by the code under test
  case         one program with one parameter set, with a stable id: the one record
               ``program.Case`` for every kind; its ``form`` names it (a core case keeps
               its goldens' names, ``ensemble-s0-n8-d7-f5``)
  run          one execution of a case, made once per process (``runs.run_once``) and read by
               every check of it (``runs.Run``): its program's ``run(p)``; a core case's
               (``runner.CoreRun``) on the inputs stored in its golden
  outcome      what a run gave: values, a raised error, or an API the release lacks
               (``program.Outcome``); a core run's values are its inputs, output and params
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
               gives it for every case (``program.judge_outcomes``), with the program's own
               comparison per key (a scenario's tolerance class, a core case's allowance:
               ``Program.judge``)
  oracle       a golden-free check of a case: holds on any release, needs no golden. Its
               answer is an ``program.OracleResult`` (holds, fails, not applicable) for
               every case, through ``program.check_oracles``: an oracle raises AssertionError
               or NotApplicable, or (the core's battery, oracles.py) returns its results
  expectation  what a lifecycle scenario does on the reference pins in one transform mode
               (``lifecycle.Expectation``)
  era          what a scenario does from one flax release on, relative to the reference
               goldens, and why (``compat.Era``)
  cause        why a golden failed: prng-config, float-rounding, semantics-broken, ...
               (``explain.Cause``), found by rerunning under the golden's settings
  census       a compiled program's cost: flops, bytes, HLO op counts (``cost.Census``)
"""
