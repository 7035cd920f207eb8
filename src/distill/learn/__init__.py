"""What the student learns and when it may answer: curation (curate, reword), the coverage decision
under an error bound (coverage), open-book examples and answers (open_book), TRL training (train),
a version loaded for answering (student) and its confidence and cost (student_gate).
"""
