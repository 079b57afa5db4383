"""decoded"""
