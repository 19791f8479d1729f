# install(): headers, the library, an exported CMake package (find_package(ringio) ->
# ringio::ringio) and a pkg-config file.
include(CMakePackageConfigHelpers)

install(TARGETS ringio EXPORT ringioTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/ringio DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT ringioTargets NAMESPACE ringio:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ringio)

configure_package_config_file(cmake/ringioConfig.cmake.in ${PROJECT_BINARY_DIR}/ringioConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ringio)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/ringioConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/ringioConfig.cmake ${PROJECT_BINARY_DIR}/ringioConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ringio)

# A relocatable prefix, so that cmake --install --prefix X gives a .pc file that points at X.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(RINGIO_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  string(REGEX REPLACE "[^/]+" ".." _ringio_pc_up "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
  set(RINGIO_PC_PREFIX "\${pcfiledir}/${_ringio_pc_up}")
endif()
configure_file(cmake/ringio.pc.in ${PROJECT_BINARY_DIR}/ringio.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/ringio.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
