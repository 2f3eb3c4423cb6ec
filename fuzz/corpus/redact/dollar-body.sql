CREATE FUNCTION f() RETURNS STRING AS $$ select 'it''s; "x"' $$; select 'a;b' as "q;" -- 'c'
/* 'd' */