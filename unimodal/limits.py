"""Bounds on what one request may ask for, shared by the command line and chat sessions.

Plain Python only: the command-line parsers import these to build `unimodal --help`.
"""
# Best-of-N: the judge's gains flatten by N = 16-32 (Scale-RAE's test-time scaling curves), while
# time and memory grow linearly in N; --n 100000 once ran for minutes and took 5 GB.
MAX_CANDIDATES = 64
# Flow samplers converge in tens of steps (the models default to 25-50); more only costs time.
MAX_STEPS = 1000
