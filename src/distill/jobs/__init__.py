"""The jobs users run that combine the stages: the evaluation (evaluate), the gated cron job
(nightly), the HTML report (report) and the whole loop on the sample (quickstart).
"""
