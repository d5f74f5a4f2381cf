"""The operator's cockpit (`azaion serve`): server-rendered pages and JSON over the data tree,
runs, models and quarantine, built on the same functions as the CLI (docs/data-tree.md)."""
