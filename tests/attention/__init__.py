"""Tests of amylum.attention (CPU)."""
