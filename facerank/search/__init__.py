"""The FAISS index with stable ids, chosen by size (index), and its search parameters tuned
against exact search (tuning).
"""
