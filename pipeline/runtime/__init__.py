"""Processes, containers, the served API, the tracking server and the files the pipeline writes."""
