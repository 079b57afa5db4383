"""fewshot"""
