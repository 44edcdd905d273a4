"""The learning tier: small runs of fixed size that must learn, in the default test run.

Every other default test checks mechanics (shapes, gradients, equal numbers on two paths); these
check outcomes. Each trains a fixed-size model for a fixed number of updates on one thread, with
fixed seeds and no wall-clock limit, and asserts a learning result against a baseline computed
from the same data. Each threshold sits a stated margin from values measured over five seeds, so
a run does not flake, yet a break of the learning machinery (a wrong gradient, a cut
back-propagation path, a misplaced gate bias) fails. The ``slow`` tests keep the paper-size
claims.
"""
