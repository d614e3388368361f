DROP TABLE openai_conversations;
