"""Answering at run time: the router (replay, the student or RAG, per question) and the
OpenAI-compatible app around it (app).
"""
