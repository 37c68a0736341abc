/*
 * msvc_shim.h - force-included (-include) when tests/test_windows_sem.py
 * compiles src/fastjob_io_win.h for the MSVC ABI with
 * clang --target=x86_64-pc-windows-msvc and the headers MinGW-w64 ships
 * (there is no MSVC here).  Those headers, seeing no __GNUC__, define
 * __attribute__ away (which breaks clang's own intrinsics headers) and put
 * __declspec after declarators (which clang rejects); this undoes both.
 */
#ifndef _MSC_VER
#error "compile with --target=x86_64-pc-windows-msvc: the _MSC_VER branches are the point"
#endif
#include <_mingw.h>
#undef __attribute__
#undef __MINGW_ATTRIB_NORETURN
#define __MINGW_ATTRIB_NORETURN
#undef __MINGW_ATTRIB_DEPRECATED
#define __MINGW_ATTRIB_DEPRECATED
