"""CLI subcommands: one module each, discovered by `crab_rt.cli`."""
