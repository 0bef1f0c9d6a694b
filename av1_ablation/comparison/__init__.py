"""Comparing the recorded loss arms: selecting the runs (``runs``), the statistical tests
(``statistics``), tables and verdict (``report``), the reference models beside the arms
(``context``), the figures (``figures``) and the ``compare`` command (``command``).

It reads what ``training`` wrote through :mod:`av1_ablation.record` only. Nothing is
imported here.
"""
