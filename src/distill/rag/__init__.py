"""The RAG teacher and its inputs: documents to chunks (corpus), hybrid retrieval (index, rerank,
tune), whether the evidence answers (answerability), the cited answer (teacher), and the traces
it writes: batch collection (collect), a RAG of your own (external), query logs (traffic).
"""
