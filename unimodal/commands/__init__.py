"""Command-line front ends; each module registers one `unimodal` sub-command."""
