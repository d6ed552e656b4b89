"""The libcst injection engine and its per-target recipes (``tsattn-inject``).

Modules (one concept each):

    targets.py      target kinds (calf, hephaestus, wave_transformer, patchtst) and their detection by fingerprints
    recipe.py       Recipe / Option / Edit (a recipe is data) and the registry
    codemods/       the generic, reusable libcst codemods recipes are made of, one module per kind of edit
    templates.py    Template(source, dest): files copied into the target, with the templates they import
    record.py       the injection record and write-ahead journal (its format, reading; standard library only)
    transaction.py  the file-operation layer: journaled atomic writes, rollback (in-process and after a kill)
    gitrepo.py      the target clone through the ``git`` command (root, git dir, HEAD, plumbing)
    engine.py       inject / revert / status: recovery first, plan in memory, safety checks, one journaled
                    transaction, the patch
    cli.py          the command line
    recipes/        one module per recipe (registered at import); recipe templates in sub-packages

Adding a recipe is adding ONE module, ``recipes/<kind>_<feature>.py`` (real ones: ``calf_wcmha.py``,
``wave_transformer_enhancements.py``, ``hephaestus_efficient.py``, which registers several features)::

    from pathlib import Path
    from tsattn.injector.codemods import AddImport, AddArgparseArgument, WrapCall, SetKeyword, ...
    from tsattn.injector.recipe import Edit, Option, Recipe, register
    from tsattn.injector.templates import MODULES, Template

    def edits(options):            # the codemods to run, per file, for the resolved option values
        return [
            Edit("hephaestus/timeseries_models/models.py", AddImport,   # written absolute by libcst
                 module=".powerformer_attention", names=["WCMHA"]),
            Edit("hephaestus/timeseries_models/models.py", SetKeyword,
                 callee="MultiHeadAttention4D", keyword="alpha", value=options["alpha"]),
        ]

    RECIPE = register(Recipe(
        kind="hephaestus", feature="wcmha", description="one line for --list",
        edits=edits,
        templates=(Template(MODULES / "wcmha.py", "hephaestus/timeseries_models/powerformer_attention.py"),),
        options=(Option("alpha", float, 1.0, "decay scale"),),
        validate=None,             # optional: raise UsageError for bad option combinations
    ))

- Options become ``--<name>`` flags of ``tsattn-inject`` (shared by recipes using the same name); a re-run with a
  new value must update the code in place, which the codemods do (each is idempotent, see ``codemods/``).
- Templates: files of ``tsattn/modules/`` are installed verbatim (a template imports a sibling only relatively,
  and the sibling is installed beside it, under the recipe's name for it if the recipe lists it). Files specific
  to a recipe live in the recipe's package (``recipes/<kind>_templates/``), are real, tested Python, import
  generic templates as ``from tsattn.modules.wcmha import ...`` (rewritten to ``from .<installed name> import``
  on installation) and start with ``# tsattn-inject `` (``engine.MARKER``), which marks them as ours.
- A new target kind: ``targets.register_kind(TargetKind(name, description, (Fingerprint(path, classes), ...)))``.
- Tests: write a look-alike of the target (only the structural anchors the recipe needs, never upstream code)
  under ``tsattn/examples/<kind>_lookalike/``; ``tsattn.examples.lookalike_repo(name, tmp_path)`` makes a
  git repository of it; run ``engine.inject``/``engine.revert`` (or ``cli.main([...])``) on it and import the
  result with ``tsattn.examples.import_from``. Each new codemod gets before/after snippet tests.

Where the record of an injection lives: ``.git/tsattn/<kind>-<feature>.json`` in the target (``record.py``: tool
version, options, upstream commit, the original bytes of every touched file; while a change runs, the journal
that undoes it). It is outside the work tree, so it is neither in ``git status`` nor in the patch, and
``--revert`` can restore the files byte for byte even with ``--allow-dirty``; a killed run is rolled back by the
next command on the clone. A colleague who only ``git apply``-ed the patch has no record: there, idempotency
comes from the codemods themselves (the same injection plans no change, with the option values read back from
the code), recipe-specific files carry the ``# tsattn-inject`` marker, and the patch's header names the tool
version, feature, options and upstream commit.
"""
